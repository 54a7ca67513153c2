"""The ``faas`` command: run the appliance and manage functions.

Every command talks to the control-plane API (``--api`` or ``FAAS_API``), except ``up`` and
``serve``, which run it. Errors print as one line, ``error: <code>: <message>``, and exit 1.
"""

from __future__ import annotations

import errno
import json
import os
import sys
import threading
import time
from pathlib import Path

import click

from appliance import __version__
from appliance.client import (
    DEFAULT_API,
    ApiError,
    ApplianceClient,
    find_token,
    local_api,
    read_config,
    read_function_json,
)
from appliance.config import Settings
from appliance.core.errors import ApplianceError


def _client(ctx) -> ApplianceClient:
    return ApplianceClient(ctx.obj["api"], token=ctx.obj["token"])


def _data_dir() -> str:
    try:
        return Settings.from_env().data_dir
    except ApplianceError:
        return Settings.data_dir


# -- output: text for people, --output json for scripts ------------------------------------

#: ``--output``/``-o`` on every command that prints data; ``faas -o json CMD`` sets it for all.
output_option = click.option("--output", "-o", type=click.Choice(["text", "json"]), default=None,
                             help="text (default) or json.")


def _json_out(ctx, output) -> bool:
    return (output or ctx.obj.get("output") or "text") == "json"


def _echo_json(data) -> None:
    click.echo(json.dumps(data, indent=2))


def _complete_functions(ctx, param, incomplete):
    """Shell completion of function names, from the API the command line names (silent when it is down)."""
    root = ctx.find_root()
    try:  # click runs no group callback while completing: find the API and token as `main` does
        data_dir = _data_dir()
        api = root.params.get("api") or local_api(data_dir) or read_config().get("api") or DEFAULT_API
        token, _ = find_token(api, data_dir, root.params.get("token"))
        names = [f["name"] for f in ApplianceClient(api, token=token, timeout_s=2.0).list_functions()]
    except Exception:  # noqa: BLE001 - completion must never print an error into the shell
        return []
    return [n for n in names if n.startswith(incomplete)]


def _edge_url(ctx) -> str | None:
    """Where HTTP triggers are served: FAAS_EDGE, else the API's host with the edge port it reports."""
    if os.environ.get("FAAS_EDGE"):
        return os.environ["FAAS_EDGE"].rstrip("/")
    from urllib.parse import urlsplit
    try:
        port = _client(ctx).health().get("edge_port")
    except ApiError:
        return None
    if not port:
        return None
    u = urlsplit(ctx.obj["api"])
    host = u.hostname or "127.0.0.1"
    return f"{u.scheme or 'http'}://{'[' + host + ']' if ':' in host else host}:{port}"


def _with_url(t: dict, edge: str | None) -> dict:
    return {**t, "url": f"{edge}{t['path']}" if edge and "path" in t else None}


def _read_data(data: str | None):
    """The event of ``--data``: JSON text, ``@file`` (a file of JSON) or ``-`` (JSON on stdin)."""
    if data is None:
        return {}
    if data == "-":
        text, where = sys.stdin.read(), "stdin"
    elif data.startswith("@"):
        try:
            text, where = Path(data[1:]).read_text(), data[1:]
        except OSError as exc:
            _fail(f"--data {data}: cannot read {data[1:]}: {exc.strerror}")
    else:
        text, where = data, None
    try:
        return json.loads(text)
    except ValueError as exc:
        _fail(f"--data is not valid JSON{' (' + where + ')' if where else ''}: {exc}")


def _fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(1)


class _Group(click.Group):
    """Turns API and validation errors into one clear line and a non-zero exit."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except ApiError as exc:
            where = f" (field: {exc.field})" if exc.field else ""
            hint = ""
            if exc.status == 401 and ctx.obj and ctx.obj.get("token_source") == "none":
                hint = (f"; no token found: give --token or FAAS_TOKEN, run from the directory holding the data "
                        f"directory ({_data_dir()}/admin.token), or put token = ... in ~/.config/faas/config")
            _fail(f"{exc.code}: {exc.message}{where}{hint}")
        except ApplianceError as exc:
            _fail(f"{exc.code}: {exc.message}")


@click.group(cls=_Group)
@click.option("--api", default=None, envvar="FAAS_API",
              help=f"Control-plane API URL [the data directory's running appliance, else the config file's api, "
                   f"else {DEFAULT_API}].")
@click.option("--token", default=None, envvar="FAAS_TOKEN",
              help="API token [FAAS_TOKEN, else <data dir>/admin.token, else the config file's token].")
@click.option("--output", "-o", type=click.Choice(["text", "json"]), default=None, envvar="FAAS_OUTPUT",
              help="Default output of every command: text or json [text].")
@click.version_option(__version__, "--version", prog_name="faas", message="%(prog)s %(version)s")
@click.pass_context
def main(ctx, api, token, output):
    """FaaS Appliance: deploy functions, bind HTTP triggers, call them.

    The token and the API are found in this order: --token / --api, FAAS_TOKEN / FAAS_API, the
    data directory of an appliance on this machine (APPLIANCE_DATA_DIR, default .faas: its
    admin.token and appliance.json), then ~/.config/faas/config (lines `api = URL`, `token = ...`).

    Shell completion (commands, options and function names): add
    `eval "$(_FAAS_COMPLETE=bash_source faas)"` to ~/.bashrc (zsh: zsh_source, fish: fish_source).
    """
    ctx.ensure_object(dict)
    data_dir = _data_dir()
    api = api or local_api(data_dir) or read_config().get("api") or DEFAULT_API
    ctx.obj["api"] = api
    ctx.obj["token"], ctx.obj["token_source"] = find_token(api, data_dir, token)
    ctx.obj["output"] = output


# -- running the appliance -------------------------------------------------------------------

def _run(settings: Settings, roles, example: str | None) -> None:
    from appliance.core import logs
    from appliance.server import Appliance

    logs.setup(settings.log_level)
    app = Appliance(settings, roles=roles)
    app.install_signal_handlers()
    try:
        app.start()
    except OSError as exc:
        app.stop()  # the runtime zygotes and cgroups already made
        if exc.errno in (errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES) and not exc.filename:
            ports = " and ".join(f"{label} port {port}" for label, port, role in (
                ("edge", settings.edge_port, "edge"), ("API", settings.api_port, "control")) if role in roles)
            hosts = (settings.edge_listen if settings.edge_listen == settings.api_listen
                     else f"{settings.edge_listen} (edge) / {settings.api_listen} (API)")
            _fail(f"cannot listen on {hosts} ({ports}): {exc.strerror}; stop what uses it, or pick "
                  "other ports with --edge-port and --api-port (make up EDGE_PORT=... API_PORT=...)")
        _fail(f"the appliance could not start: {exc}")
    except ApplianceError as exc:  # a setting that cannot be honoured here (APPLIANCE_INSTANCE_NET_FILTER=on)
        app.stop()
        _fail(f"{exc.code}: {exc.message}")
    from appliance.server import read_info

    info = read_info(settings.data_path) or {}
    edge, api = info.get("edge_url"), info.get("api_url")
    click.echo(f"FaaS Appliance is up ({settings.mode} mode). Edge router: {edge or '-'}  API: {api or '-'}")
    token_file = settings.data_path / "admin.token"
    if app.admin_token_path is not None:
        click.echo(f"Admin token written to {app.admin_token_path} (0600); `faas` run here finds it.")
    elif api and token_file.exists():
        click.echo(f"Admin token: {token_file}")
    if example and api:
        try:
            token = token_file.read_text().strip() if token_file.exists() else settings.admin_token or None
            ex = _deploy_example(ApplianceClient(api, token=token), Path(example))
            if ex and edge:
                click.echo(f"Example deployed. Try:  curl {edge}{ex}")
        except ApiError as exc:
            click.echo(f"error: the example did not deploy: {exc.code}: {exc.message}", err=True)
    click.echo("Stop with Ctrl-C.")
    app.wait()


def _deploy_example(api: ApplianceClient, directory: Path) -> str | None:
    """Deploy the example once: a function of its name that exists (the user's own, or the example
    from an earlier start) is left as it is. Returns a trigger path to try, if the function has one."""
    cfg = read_function_json(directory)
    name = cfg.pop("name", directory.name)
    triggers = cfg.pop("triggers", [])
    try:
        api.get_function(name)
    except ApiError as exc:
        if exc.status != 404:
            raise
        click.echo(f"Deploying the example {directory} as {name} ...")
        api.deploy(name, directory, triggers=triggers, **cfg)
    else:
        click.echo(f"A function named {name} exists: the example {directory} is not deployed over it.")
    paths = [t["path"] for t in api.list_triggers(name) if "{" not in t["path"]]
    return paths[0] if paths else None


def _settings(host, edge_port, api_port, data_dir, edge_host=None, api_host=None) -> Settings:
    try:
        return Settings.from_env(host=host, edge_port=edge_port, api_port=api_port, data_dir=data_dir,
                                 edge_host=edge_host, api_host=api_host)
    except ApplianceError as exc:
        _fail(exc.message)
        raise


@main.command()
@click.option("--host", default=None, help="Address both listeners use unless the two below say [127.0.0.1].")
@click.option("--edge-host", default=None, help="Address of the edge router (HTTP triggers) [--host].")
@click.option("--api-host", default=None, help="Address of the control-plane API [--host]; keep it private.")
@click.option("--edge-port", type=int, default=None, help="Edge router port [8080].")
@click.option("--api-port", type=int, default=None, help="Control-plane API port [8081].")
@click.option("--data-dir", default=None, help="Where state is kept [.faas].")
@click.option("--example", default=None, help="A function directory to deploy once up (e.g. examples/hello).")
def up(host, edge_host, api_host, edge_port, api_port, data_dir, example):
    """Run the appliance (edge router + API) in the foreground."""
    _run(_settings(host, edge_port, api_port, data_dir, edge_host, api_host), ("edge", "control"), example)


@main.command()
@click.option("--role", type=click.Choice(["edge", "control", "all"]), default="all", show_default=True)
@click.option("--host", default=None)
@click.option("--edge-host", default=None)
@click.option("--api-host", default=None)
@click.option("--edge-port", type=int, default=None)
@click.option("--api-port", type=int, default=None)
@click.option("--data-dir", default=None)
def serve(role, host, edge_host, api_host, edge_port, api_port, data_dir):
    """Run one role of the appliance (for systemd units and Nomad jobs)."""
    roles = ("edge", "control") if role == "all" else (role,)
    _run(_settings(host, edge_port, api_port, data_dir, edge_host, api_host), roles, None)


@main.command(hidden=True)
def instance():
    """Run one function instance under Nomad (fetch code by digest, then exec the runtime)."""
    from appliance.instances.launcher import main as launch

    launch()


# -- functions ---------------------------------------------------------------------------

def _parse_env(pairs, option: str = "--env") -> dict:
    env = {}
    for p in pairs:
        if "=" not in p:
            shown = repr(p) if option == "--env" else "a value without '='"
            _fail(f"{option} takes NAME=value, got {shown}")
        k, _, v = p.partition("=")
        env[k] = v
    return env


@main.command()
@click.argument("source", type=click.Path())
@click.option("--name", help="Function name [function.json's, or the directory name].")
@click.option("--runtime", help="python3.11, nodejs20 or provided (provided.al2023).")
@click.option("--handler", help="module.function [index.handler].")
@click.option("--memory", "memory_mb", type=int, help="Memory in MB (128..10240).")
@click.option("--timeout", "timeout_s", type=int, help="Timeout in seconds (1..900).")
@click.option("--concurrency", type=int, help="Requests one instance serves at once.")
@click.option("--max-instances", type=int)
@click.option("--min-instances", type=int)
@click.option("--keep-alive", "keep_alive_s", type=int, help="Seconds an idle instance is kept.")
@click.option("--env", "env", multiple=True, help="NAME=value (repeatable). Replaces the function's whole "
              "environment (function.json's included); with --env-merge, adds to what it has.")
@click.option("--env-merge", is_flag=True, help="--env adds to (or changes) the function's current variables "
              "instead of replacing them all.")
@click.option("--secret", "secret", multiple=True, help="NAME=value, a write-only variable: stored encrypted, "
              "never shown (repeatable).")
@click.option("--expose-errors/--no-expose-errors", default=None, help="Show HTTP trigger callers the function's "
              "error message and stack trace (development) [off].")
@click.option("--layer", "layers", multiple=True, help="NAME:VERSION of a layer (repeatable, at most 5, in order).")
@click.option("--snapshot", type=click.Choice(["auto", "off"]), help="auto: Python cold starts fork from an "
              "initialised template of the version (imports done once) [off].")
@click.option("--description")
@output_option
@click.pass_context
def deploy(ctx, source, name, env, env_merge, secret, layers, output, **opts):
    """Create or update a function from a directory, a zip or one source file.

    The name defaults to function.json's, else the directory's or file's (my_fn.py -> my-fn); a
    single file sets the handler's module (my_fn.py -> my_fn.handler) and its runtime (.js ->
    nodejs20); so does a directory with index.js and no index.py. Progress goes to stderr; stdout is
    the deployed function as JSON (either --output). A trigger in function.json that cannot be bound
    fails the deploy, and a function it created is removed again.
    """
    cfg = read_function_json(source)
    triggers = cfg.pop("triggers", [])
    name = name or cfg.pop("name", None) or derive_name(source)
    cfg.pop("name", None)
    for key, value in derive_code_settings(source).items():
        cfg.setdefault(key, value)
    cfg.update({k: v for k, v in opts.items() if v is not None})
    if secret:
        cfg["secrets"] = _parse_env(secret, "--secret")
    if layers:
        cfg["layers"] = list(layers)
    api = _client(ctx)
    if env:
        given = _parse_env(env)
        if env_merge:
            try:
                current = api.get_function(name).get("environment") or {}
            except ApiError as exc:
                if exc.status != 404:
                    raise
                current = {}
            cfg["environment"] = {**cfg.get("environment", {}), **current, **given}
        else:
            cfg["environment"] = {**cfg.get("environment", {}), **given}
    click.echo(f"Packaging {source} ...", err=True)
    t0 = time.monotonic()
    out = api.deploy(name, source, triggers=triggers, **cfg)
    v = out["version"]
    click.echo(f"Deployed {name} version {v['version']} ({v['size']} bytes, {v['files']} files, "
               f"sha256 {v['digest'][:12]}) in {time.monotonic() - t0:.1f}s", err=True)
    for w in out.get("warnings", []):
        click.echo(f"warning: {w}", err=True)
    edge = _edge_url(ctx) if out.get("triggers_added") else None
    for t in out.get("triggers_added", []):
        click.echo(f"Trigger {t['method']} {t['path']} -> {name}" + (f"  {edge}{t['path']}" if edge else ""),
                   err=True)
    click.echo(json.dumps(out["function"], indent=2))


def derive_name(source) -> str:
    """A valid function name from a path: my_fn.py -> my-fn, "My Project/" -> my-project."""
    import re

    p = Path(source).resolve()
    stem = p.name if p.is_dir() else p.name.split(".")[0]
    name = re.sub(r"[^a-z0-9]+", "-", stem.lower()).strip("-")
    if not name or not name[0].isalpha():
        name = f"fn-{name}".rstrip("-")
    return name[:60].rstrip("-")


def derive_code_settings(source) -> dict:
    """What the code itself says: a single file names the handler's module and the runtime
    (.py -> python3.11, .js/.mjs/.cjs -> nodejs20); a directory with index.js and no index.py is nodejs20."""
    p = Path(source)
    node = (".js", ".mjs", ".cjs")
    if p.is_file() and p.suffix in (".py", *node):
        return {"handler": f"{p.stem}.handler", "runtime": "nodejs20" if p.suffix in node else "python3.11"}
    if p.is_dir() and not (p / "index.py").exists() and any((p / f"index{s}").exists() for s in node):
        return {"runtime": "nodejs20"}
    return {}


@main.group()
def trigger():
    """Triggers: bind METHOD PATH (HTTP) or a schedule to a function."""


@trigger.command("add")
@click.argument("function", shell_complete=_complete_functions)
@click.argument("method", required=False)
@click.argument("path", required=False)
@click.option("--auth", "auth_type", type=click.Choice(["none", "bearer", "hmac", "jwt"]), default="none",
              show_default=True, help="Who may call: anyone, holders of a key (bearer), signed requests (hmac), "
              "or bearers of a JWT (jwt).")
@click.option("--issuer", help="jwt: the expected iss claim.")
@click.option("--audience", multiple=True, help="jwt: an accepted aud value (repeatable).")
@click.option("--public-key", type=click.Path(exists=True, dir_okay=False), help="jwt: a PEM public key file.")
@click.option("--jwks", "jwks_file", type=click.Path(exists=True, dir_okay=False), help="jwt: a JWKS document file.")
@click.option("--jwks-url", help="jwt: where the JWKS document is served (fetched and cached by the edge).")
@click.option("--algorithm", multiple=True, type=click.Choice(["RS256", "ES256"]),
              help="jwt: accepted algorithms [RS256, ES256].")
@click.option("--leeway", type=int, help="jwt: seconds of clock skew allowed on exp and nbf [30].")
@click.option("--cors-origin", multiple=True, help="CORS: an allowed origin, scheme://*.domain or * (repeatable).")
@click.option("--cors-method", multiple=True, help="CORS: an allowed method [*] (repeatable).")
@click.option("--cors-header", multiple=True, help="CORS: an allowed request header, or * (repeatable).")
@click.option("--cors-expose", multiple=True, help="CORS: a response header browsers may read (repeatable).")
@click.option("--cors-max-age", type=int, help="CORS: seconds a browser may cache a preflight.")
@click.option("--cors-credentials", is_flag=True, help="CORS: allow cookies and credentials.")
@click.option("--async", "asynchronous", is_flag=True, help="Answer 202 once the event is queued; the function "
              "runs it later, with retries (see `faas events`).")
@click.option("--schedule", default=None, help="'rate(5 minutes)' or 'cron(0 9 ? * MON-FRI *)' instead of "
              "METHOD PATH.")
@click.option("--event", "event_json", default=None, help="The schedule's constant event as JSON [EventBridge's "
              "Scheduled Event].")
@click.option("--timezone", default=None, help="IANA time zone of a cron schedule [UTC].")
@click.option("--disabled", is_flag=True, help="Create the schedule or queue source disabled.")
@click.option("--queue", default=None, help="A queue name or SQS URL to read, instead of METHOD PATH.")
@click.option("--batch-size", type=int, default=None, help="Messages per invocation, 1..10 [10].")
@click.option("--batching-window", type=int, default=None, help="Seconds to gather a batch, 0..20 [0].")
@click.option("--max-concurrency", type=int, default=None, help="Batches of this source at once, 1..20 [2].")
@click.option("--visibility-timeout", type=int, default=None, help="Embedded queues: seconds a received message "
              "stays hidden [30] (SQS queues use their own).")
@click.option("--report-batch-item-failures", is_flag=True, help="Honour batchItemFailures in the result.")
@output_option
@click.pass_context
def trigger_add(ctx, function, method, path, auth_type, issuer, audience, public_key, jwks_file, jwks_url, algorithm,
                leeway, cors_origin, cors_method, cors_header, cors_expose, cors_max_age, cors_credentials,
                asynchronous, schedule, event_json, timezone, disabled, queue, batch_size, batching_window,
                max_concurrency, visibility_timeout, report_batch_item_failures, output):
    """Add an HTTP trigger (FUNCTION METHOD PATH, optionally with authentication, CORS or --async), a
    schedule (--schedule EXPR) or a queue source (--queue Q). An HTTP trigger's full URL on the edge
    router is printed."""
    api = _client(ctx)
    if (method or path) and (schedule or queue) or (schedule and queue):
        _fail("Request.Invalid: give one of METHOD PATH, --schedule or --queue")
    if queue:
        opts = {"batch_size": batch_size, "batching_window_s": batching_window, "max_concurrency": max_concurrency,
                "visibility_timeout_s": visibility_timeout}
        settings = {k: v for k, v in opts.items() if v is not None}
        if report_batch_item_failures:
            settings["report_batch_item_failures"] = True
        if disabled:
            settings["enabled"] = False
        t = api.add_queue_source(function, queue, **settings)
        click.echo(f"{t['id']} {t['queue']} -> {t['function']} batch {t['batch_size']} "
                   f"concurrency {t['max_concurrency']}")
        return
    if schedule:
        event = None
        if event_json:
            try:
                event = json.loads(event_json)
            except ValueError as exc:
                _fail(f"Request.Invalid: --event is not valid JSON: {exc}")
        t = api.add_schedule(function, schedule, event=event, timezone=timezone, enabled=not disabled)
        click.echo(f"{t['id']} {t['schedule']} -> {t['function']} next run {t['next_run'] or '-'}")
        return
    if not (method and path):
        _fail("Request.Invalid: give METHOD PATH (an HTTP trigger) or --schedule EXPR")
    auth: dict = {"type": auth_type}
    if auth_type == "jwt":
        auth.update({"issuer": issuer, "audience": list(audience)})
        if public_key:
            auth["public_key"] = Path(public_key).read_text()
        if jwks_file:
            auth["jwks"] = Path(jwks_file).read_text()
        if jwks_url:
            auth["jwks_url"] = jwks_url
        if algorithm:
            auth["algorithms"] = list(algorithm)
        if leeway is not None:
            auth["leeway_s"] = leeway
    elif issuer or audience or public_key or jwks_file or jwks_url or algorithm or leeway is not None:
        _fail("Request.Invalid: --issuer, --audience, --public-key, --jwks, --jwks-url, --algorithm and --leeway "
              "are for --auth jwt")
    cors = None
    if cors_origin:
        cors = {"allow_origins": list(cors_origin), "allow_methods": list(cors_method) or ["*"],
                "allow_headers": list(cors_header), "expose_headers": list(cors_expose),
                "max_age": cors_max_age or 0, "allow_credentials": cors_credentials}
    elif cors_method or cors_header or cors_expose or cors_max_age or cors_credentials:
        _fail("Request.Invalid: give at least one --cors-origin with the other --cors options")
    t = _with_url(api.add_trigger(function, method, path, "async" if asynchronous else None, auth=auth, cors=cors),
                  _edge_url(ctx))
    if _json_out(ctx, output):
        return _echo_json(t)
    note = f" (auth: {t['auth']['type']}{', cors' if t.get('cors') else ''})" if auth_type != "none" or cors else ""
    note += " (async)" if asynchronous else ""
    click.echo(f"{t['method']} {t['path']} -> {t['function']}{note}" + (f"  {t['url']}" if t["url"] else ""))
    if auth_type in ("bearer", "hmac"):
        click.echo(f"Create its {'key' if auth_type == 'bearer' else 'signing secret'} with: "
                   f"faas trigger key create {t['method']} {t['path']}", err=True)


@trigger.group("key")
def trigger_key():
    """Keys of bearer triggers and signing secrets of hmac triggers."""


@trigger_key.command("create")
@click.argument("method")
@click.argument("path")
@click.option("--name", help="A name for the key (to revoke it by) [key-<random>].")
@click.pass_context
def trigger_key_create(ctx, method, path, name):
    """Make a key (bearer) or signing secret (hmac) for a trigger; it is printed this once."""
    k = _client(ctx).create_trigger_key(method, path, name)
    click.echo(k["key"])
    how = ("send it as: Authorization: Bearer <key>" if k["type"] == "bearer" else
           "sign with it: X-Faas-Signature: sha256=HMAC-SHA256(secret, \"<timestamp>.<body>\") and "
           "X-Faas-Timestamp: <timestamp>")
    click.echo(f"key {k['name']} of {k['method']} {k['path']}: shown only now, store it safely; {how}", err=True)


@trigger_key.command("ls")
@click.argument("method")
@click.argument("path")
@click.pass_context
def trigger_key_ls(ctx, method, path):
    """List a trigger's keys (names and hints, never the keys)."""
    for k in _client(ctx).list_trigger_keys(method, path):
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(k["created_at"]))
        click.echo(f"{k['name']:20} {k['type']:7} {k['hint']}...  {created}")


@trigger_key.command("revoke")
@click.argument("method")
@click.argument("path")
@click.argument("name")
@click.pass_context
def trigger_key_revoke(ctx, method, path, name):
    """Revoke a key: requests with it are refused from now on."""
    k = _client(ctx).revoke_trigger_key(method, path, name)["revoked"]
    click.echo(f"revoked {k['name']} of {k['method']} {k['path']}")


@trigger.command("ls")
@click.argument("function", required=False, shell_complete=_complete_functions)
@output_option
@click.pass_context
def trigger_ls(ctx, function, output):
    """Triggers (of one function, or all): HTTP routes with their full URLs, schedules, queue sources."""
    edge = _edge_url(ctx)
    triggers = [t if t.get("kind") in ("queue", "schedule") else _with_url(t, edge)
                for t in _client(ctx).list_triggers(function)]
    if _json_out(ctx, output):
        return _echo_json(triggers)
    for t in triggers:
        if t.get("kind") == "queue":
            click.echo(f"{'QUEUE':7} {t['queue']:40} {t['function']} {t['id']} batch {t['batch_size']} "
                       f"window {t['batching_window_s']}s concurrency {t['max_concurrency']}"
                       + ("" if t.get("enabled", True) else " disabled"))
            continue
        if t.get("kind") == "schedule":
            state = f"next run {t['next_run']}" if t.get("enabled", True) else "disabled"
            click.echo(f"{'SCHED':7} {t['schedule']:40} {t['function']} {t['id']} {state}"
                       + (f" ({t['timezone']})" if t.get("timezone", "UTC") != "UTC" else ""))
            continue
        extra = t.get("auth", {}).get("type", "none") + (" cors" if t.get("cors") else "") \
            + (f" {t['invocation']}" if t.get("invocation") else "")
        click.echo(f"{t['method']:7} {t['path']:40} {t['function']:24} {extra:12} {t['url'] or ''}".rstrip())


@trigger.command("rm")
@click.argument("method")
@click.argument("path", required=False)
@output_option
@click.pass_context
def trigger_rm(ctx, method, path, output):
    """Remove an HTTP trigger (METHOD PATH) or a schedule or queue source (its ID)."""
    if path is None:
        t = _client(ctx).remove_trigger_id(method)["deleted"]
        if _json_out(ctx, output):
            return _echo_json({"deleted": t})
        click.echo(f"removed {t['id']}")
        return
    t = _client(ctx).remove_trigger(method, path)["deleted"]
    if _json_out(ctx, output):
        return _echo_json({"deleted": t})
    click.echo(f"removed {t['method']} {t['path']}")


@trigger.command("enable")
@click.argument("trigger_id")
@click.pass_context
def trigger_enable(ctx, trigger_id):
    """Enable a schedule."""
    t = _client(ctx).update_trigger(trigger_id, enabled=True)
    click.echo(f"{t['id']} enabled" + (f", next run {t['next_run']}" if t.get('next_run') else ""))


@trigger.command("disable")
@click.argument("trigger_id")
@click.pass_context
def trigger_disable(ctx, trigger_id):
    """Disable a schedule (it keeps its settings)."""
    t = _client(ctx).update_trigger(trigger_id, enabled=False)
    click.echo(f"{t['id']} disabled")


@main.group()
def token():
    """API tokens: who may deploy, invoke or read (admin scope)."""


@token.command("create")
@click.argument("name")
@click.option("--scope", required=True, type=click.Choice(["admin", "deploy", "invoke", "read"]),
              help="admin: everything; deploy: change functions and triggers, invoke, read; invoke: invoke and "
                   "read records; read: read only.")
@click.option("--functions", default=None, help="Limit deploy or invoke to functions matching this glob (shop-*).")
@click.option("--expires", default=None, help="Lifetime: 3600s, 90m, 12h, 30d, 2w [never].")
@click.pass_context
def token_create(ctx, name, scope, functions, expires):
    """Make a token and print it, once: it cannot be shown again."""
    out = _client(ctx).create_token(name, scope, functions=functions, expires=expires)
    click.echo(f"Token {out['name']} (scope {out['scope']}"
               + (f", functions {out['functions']}" if out.get("functions") else "")
               + (f", expires {_when(out['expires_at'])}" if out.get("expires_at") else "")
               + "). It is shown this once; keep it secret:", err=True)
    click.echo(out["token"])


def _when(ts) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(ts)) if ts else "never"


@token.command("ls")
@click.pass_context
def token_ls(ctx):
    """List tokens (never their values)."""
    click.echo(f"{'NAME':24} {'SCOPE':7} {'FUNCTIONS':16} {'EXPIRES':21} CREATED BY")
    for t in _client(ctx).list_tokens():
        click.echo(f"{t['name']:24} {t['scope']:7} {t.get('functions') or '*':16} {_when(t.get('expires_at')):21} "
                   f"{t.get('created_by') or '-'}")


@token.command("revoke")
@click.argument("name")
@click.pass_context
def token_revoke(ctx, name):
    """Revoke a token: it stops working at once (within a second on other control planes)."""
    t = _client(ctx).revoke_token(name)
    click.echo(f"revoked {t['name']}")


@main.command()
@click.argument("name", shell_complete=_complete_functions)
@click.option("--data", "-d", default=None, help="The event: JSON, @FILE (a file of JSON) or - (stdin) [{}].")
@click.option("--verbose", "-v", is_flag=True, help="Also print request id, cold start and timing, and the "
              "stack trace of a failed invocation.")
@click.option("--async", "asynchronous", is_flag=True, help="Queue the event and print its request id (202); "
              "`faas events NAME` shows how it went.")
@output_option
@click.pass_context
def invoke(ctx, name, data, verbose, asynchronous, output):
    """Invoke a function directly and print its result.

    A failed invocation prints one error line and exits 1; -v adds the function's stack trace.
    With --output json the result is always printed as JSON (a string result too).
    """
    event = _read_data(data)
    resp = _client(ctx).invoke_raw(name, event, asynchronous=asynchronous)
    if asynchronous and resp.status_code == 202:
        click.echo(resp.json()["requestId"])
        return
    if verbose:
        click.echo(f"request id: {resp.headers.get('X-Request-Id')}  cold: {resp.headers.get('X-Faas-Cold-Start')}  "
                   f"version: {resp.headers.get('X-Amz-Executed-Version')}  "
                   f"timing: {resp.headers.get('Server-Timing')}", err=True)
    try:
        body = resp.json()
    except ValueError:
        _fail(f"Http.Error: the API answered {resp.status_code} without JSON: {resp.text[:200]!r}")
    if resp.status_code >= 400:
        err = body.get("error", {}) if isinstance(body, dict) else {}
        trace = "".join((err.get("function") or {}).get("stackTrace") or []).rstrip()
        if verbose and trace:
            click.echo(trace, err=True)
        message = " ".join(str(err.get("message")).splitlines())  # a function's message may span lines
        _fail(f"{err.get('code')}: {message}"
              + (f" (request {resp.headers.get('X-Request-Id')}; -v shows the stack trace)" if trace and not verbose
                 else ""))
    click.echo(json.dumps(body) if _json_out(ctx, output) or not isinstance(body, str) else body)


@main.command()
@click.argument("name", shell_complete=_complete_functions)
@click.option("--follow", "-f", is_flag=True, help="Keep printing new invocations.")
@click.option("--since", type=float, default=None, help="Seconds ago (e.g. 300) to start from; with --follow, "
              "nothing older is printed.")
@click.option("--status", default=None, help="ok, error, timeout, throttled or unavailable.")
@click.option("--limit", type=int, default=100)
@output_option
@click.pass_context
def logs(ctx, name, follow, since, status, limit, output):
    """Print a function's invocations with their log lines and cold-start phases.

    --output json prints one JSON object a line ({"seq", "request_id", "ts", "line"})."""
    api = _client(ctx)
    as_json = _json_out(ctx, output)
    params = {"limit": limit}
    if status:
        params["status"] = status
    if since is not None:
        # An absolute start, so following goes on from it too: a cursor from an empty window
        # (nothing since then yet) would otherwise start at the beginning of the history.
        params["since"] = time.time() - abs(since)

    def show(lines):
        for line in lines:
            click.echo(json.dumps(line) if as_json else line["line"])

    out = api.logs(name, **params)
    show(out["lines"])
    after = out["next"]
    params.pop("limit")
    try:
        while follow:
            time.sleep(1.0)
            out = api.logs(name, after=after, limit=1000, **params)
            show(out["lines"])
            after = out["next"] or after
    except KeyboardInterrupt:
        pass  # Ctrl-C is how a follow ends: not an error


@main.command()
@click.argument("name")
@click.option("--status", default=None, help="queued, running, retrying, succeeded or dead.")
@click.option("--limit", type=int, default=50)
@click.pass_context
def events(ctx, name, status, limit):
    """List a function's asynchronous events, newest first, with counts per state."""
    out = _client(ctx).events(name, limit=limit, **({"status": status} if status else {}))
    counts = out["counts"]
    click.echo("  ".join(f"{k}={counts.get(k, 0)}" for k in ("queued", "running", "retrying", "succeeded", "dead")))
    click.echo(f"{'REQUEST ID':34} {'STATE':9} {'ATTEMPTS':8} {'AGE S':>7}  SOURCE / LAST ERROR")
    now = time.time()
    for e in out["events"]:
        note = e["last_error"] or e["source"] or ""
        click.echo(f"{e['id']:34} {e['state']:9} {e['attempts']:<8} {now - e['created_at']:>7.1f}  {note[:100]}")


@main.command("warm")
@click.argument("name")
@click.argument("actions", nargs=-1)
@click.option("--timezone", default="UTC", help="IANA time zone of the cron expressions [UTC].")
@click.option("--clear", is_flag=True, help="Remove the schedule (min_instances applies again).")
@click.pass_context
def warm(ctx, name, actions, timezone, clear):
    """Show or set scheduled min_instances: ACTIONS are 'cron(...)=N', for example
    'cron(0 8 ? * MON-FRI *)=5' 'cron(0 19 ? * MON-FRI *)=0'."""
    api = _client(ctx)
    if clear or actions:
        schedule = []
        for action in actions:
            expr, sep, n = action.rpartition("=")
            if not sep or not n.isdigit():
                _fail(f"Request.Invalid: {action!r} is not 'cron(...)=N'")
            schedule.append({"schedule": expr, "min_instances": int(n), "timezone": timezone})
        api.update_function(name, min_instances_schedule=schedule)
    fn = api.get_function(name)
    for a in fn.get("min_instances_schedule", []):
        click.echo(f"{a['schedule']:32} {a['timezone']:16} min_instances {a['min_instances']}")
    now = fn.get("min_instances_in_force")
    click.echo(f"in force now: min_instances {now['min_instances'] if now else fn['min_instances']}")


@main.group()
def queue():
    """Queues: send a message (embedded queues, or SQS with APPLIANCE_SQS_* settings)."""


@queue.command("send")
@click.argument("name")
@click.option("--data", required=True, help="The message body (text).")
@click.pass_context
def queue_send(ctx, name, data):
    click.echo(_client(ctx).send_message(name, data)["messageId"])


@main.command("async")
@click.argument("name")
@click.option("--max-retry-attempts", type=int, default=None, help="0..2 [2]")
@click.option("--max-event-age", type=int, default=None, help="Seconds, 60..21600 [21600].")
@click.option("--on-success", default=None, help="function:NAME, url:https://... or queue:NAME ('none' clears).")
@click.option("--on-failure", default=None, help="function:NAME, url:https://... or queue:NAME ('none' clears).")
@click.pass_context
def async_config(ctx, name, max_retry_attempts, max_event_age, on_success, on_failure):
    """Show or change a function's asynchronous invocation settings (retries, event age, destinations)."""
    patch: dict = {}
    if max_retry_attempts is not None:
        patch["max_retry_attempts"] = max_retry_attempts
    if max_event_age is not None:
        patch["max_event_age_s"] = max_event_age
    for key, value in (("on_success", on_success), ("on_failure", on_failure)):
        if value is None:
            continue
        if value == "none":
            patch[key] = None
            continue
        kind, sep, target = value.partition(":")
        if not sep or kind not in ("function", "url", "queue"):
            _fail(f"Request.Invalid: --{key.replace('_', '-')} must be function:NAME, url:URL or queue:NAME")
        patch[key] = {kind: target}
    api = _client(ctx)
    out = api.update_function(name, **{"async": patch}) if patch else api.get_function(name)
    click.echo(json.dumps(out.get("async", {}), indent=2))


def _weights(pairs) -> dict:
    """``--weight M=0.1`` (at most one; the API says why when there are more) -> {"M": 0.1}."""
    out = {}
    for pair in pairs:
        version, sep, share = pair.partition("=")
        if not sep:
            _fail(f"--weight must be VERSION=SHARE, for example 2=0.1; got {pair!r}")
        try:
            out[version.strip()] = float(share)
        except ValueError:
            _fail(f"--weight {pair!r}: the share must be a number between 0 and 1")
    return out


def _alias_line(a: dict) -> str:
    weights = ", ".join(f"{v}={w:g}" for v, w in a.get("weights", {}).items())
    return f"{a['name']:20} {a['version']:>7} {weights or '-':14} {a.get('description') or ''}".rstrip()


def _complete_aliases(ctx, param, incomplete):
    """Shell completion of the alias names of the function given before (silent when the API is down)."""
    name = ctx.params.get("name")
    if not name:
        return []
    root = ctx.find_root()
    try:
        data_dir = _data_dir()
        api = root.params.get("api") or local_api(data_dir) or read_config().get("api") or DEFAULT_API
        token, _ = find_token(api, data_dir, root.params.get("token"))
        names = [a["name"] for a in ApplianceClient(api, token=token, timeout_s=2.0).aliases(name)]
    except Exception:  # noqa: BLE001 - completion must never print an error into the shell
        return []
    return [n for n in names if n.startswith(incomplete)]


@main.command()
@click.argument("name", shell_complete=_complete_functions)
@click.option("--description", default=None, help="What this version is (at most 256 characters).")
@output_option
@click.pass_context
def publish(ctx, name, description, output):
    """Publish NAME's current code and settings as its next immutable version (1, 2, 3...).

    Nothing changed since the newest published version: that version is printed again."""
    v = _client(ctx).publish(name, description)
    if _json_out(ctx, output):
        return _echo_json(v)
    click.echo(f"Published {name}:{v['version']} (code version {v['code_version']}, sha256 {v['code_sha256'][:12]})",
               err=True)
    click.echo(v["version"])


@main.command()
@click.argument("name", shell_complete=_complete_functions)
@output_option
@click.pass_context
def published(ctx, name, output):
    """List NAME's published versions, newest first."""
    versions = _client(ctx).published(name)
    if _json_out(ctx, output):
        return _echo_json(versions)
    click.echo(f"{'VERSION':7} {'CODE':>5} {'SHA256':12} {'MEMORY':6} {'CREATED':20} DESCRIPTION")
    for v in versions:
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(v["created_at"]))
        click.echo(f"{v['version']:>7} {v['code_version']:>5} {v['code_sha256'][:12]} {v['config']['memory_mb']:>6} "
                   f"{created:20} {v['description']}".rstrip())


@main.command()
@click.argument("name", shell_complete=_complete_functions)
@click.argument("version", type=int)
@output_option
@click.pass_context
def unpublish(ctx, name, version, output):
    """Delete published version VERSION of NAME (refused while an alias or a trigger uses it)."""
    out = _client(ctx).delete_published(name, version)
    if _json_out(ctx, output):
        return _echo_json(out)
    click.echo(f"Deleted {name}:{version}", err=True)


@main.group()
def alias():
    """Aliases: names for published versions, with weighted routing (set, ls, get, rm)."""


@alias.command("set")
@click.argument("name", shell_complete=_complete_functions)
@click.argument("alias_name", metavar="ALIAS", shell_complete=_complete_aliases)
@click.argument("version", type=int)
@click.option("--weight", "weights", multiple=True, help="M=SHARE: send SHARE (0..1) of the alias's requests to "
              "version M (at most one).")
@click.option("--description", default=None)
@output_option
@click.pass_context
def alias_set(ctx, name, alias_name, version, weights, description, output):
    """Create or move ALIAS of NAME to published VERSION (rollback: set it back)."""
    a = _client(ctx).set_alias(name, alias_name, version, weights=_weights(weights), description=description)
    if _json_out(ctx, output):
        return _echo_json(a)
    for w in a.get("warnings", []):
        click.echo(f"warning: {w}", err=True)
    shares = "".join(f", {w:g} to version {v}" for v, w in a["weights"].items())
    click.echo(f"{name}:{a['name']} -> version {a['version']}{shares}")


@alias.command("ls")
@click.argument("name", shell_complete=_complete_functions)
@output_option
@click.pass_context
def alias_ls(ctx, name, output):
    """List NAME's aliases."""
    aliases = _client(ctx).aliases(name)
    if _json_out(ctx, output):
        return _echo_json(aliases)
    click.echo(f"{'ALIAS':20} {'VERSION':>7} {'WEIGHTS':14} DESCRIPTION")
    for a in aliases:
        click.echo(_alias_line(a))


@alias.command("get")
@click.argument("name", shell_complete=_complete_functions)
@click.argument("alias_name", metavar="ALIAS", shell_complete=_complete_aliases)
@output_option
@click.pass_context
def alias_get(ctx, name, alias_name, output):
    """Show one alias."""
    a = _client(ctx).alias(name, alias_name)
    if _json_out(ctx, output):
        return _echo_json(a)
    click.echo(f"{'ALIAS':20} {'VERSION':>7} {'WEIGHTS':14} DESCRIPTION")
    click.echo(_alias_line(a))


@alias.command("rm")
@click.argument("name", shell_complete=_complete_functions)
@click.argument("alias_name", metavar="ALIAS", shell_complete=_complete_aliases)
@output_option
@click.pass_context
def alias_rm(ctx, name, alias_name, output):
    """Delete an alias (refused while a trigger targets it)."""
    out = _client(ctx).delete_alias(name, alias_name)
    if _json_out(ctx, output):
        return _echo_json(out)
    click.echo(f"Deleted alias {name}:{alias_name}", err=True)


@main.group()
def layer():
    """Layers: shared packages functions find under /opt (publish, ls, rm)."""


@layer.command("publish")
@click.argument("name")
@click.argument("source", type=click.Path(exists=True))
@click.option("--description", default="")
@click.pass_context
def layer_publish(ctx, name, source, description):
    """Publish a directory or a .zip as NAME's next version (python/ and nodejs/node_modules/ inside)."""
    v = _client(ctx).publish_layer(name, source, description)
    click.echo(f"Published {v['ref']} ({v['size']} bytes, {v['files']} files, sha256 {v['digest'][:12]})", err=True)
    click.echo(v["ref"])


@layer.command("ls")
@click.pass_context
def layer_ls(ctx):
    """List layer versions and the functions that use them."""
    click.echo(f"{'LAYER':32} {'SIZE':>10} {'SHA256':12} USED BY")
    for v in _client(ctx).list_layers():
        click.echo(f"{v['ref']:32} {v['size']:>10} {v['digest'][:12]} {', '.join(v['used_by']) or '-'}")


@layer.command("rm")
@click.argument("name")
@click.argument("version", type=int)
@click.pass_context
def layer_rm(ctx, name, version):
    """Delete a layer version (refused while a function uses it)."""
    _client(ctx).delete_layer(name, version)
    click.echo(f"Deleted {name}:{version}", err=True)


@main.command("ls")
@output_option
@click.pass_context
def list_functions(ctx, output):
    """List functions."""
    fns = _client(ctx).list_functions()
    if _json_out(ctx, output):
        return _echo_json(fns)
    click.echo(f"{'NAME':24} {'RUNTIME':11} {'VERSION':7} {'MEMORY':6} {'TIMEOUT':7} HANDLER")
    for f in fns:
        click.echo(f"{f['name']:24} {f['runtime']:11} {f['version']:<7} {f['memory_mb']:<6} {f['timeout_s']:<7} {f['handler']}")


@main.command()
@click.argument("name", shell_complete=_complete_functions)
@output_option
@click.pass_context
def describe(ctx, name, output):
    """Show a function's settings, triggers, instances and scaling state."""
    fn = _client(ctx).get_function(name)
    edge = _edge_url(ctx)
    fn["triggers"] = [_with_url(t, edge) for t in fn.get("triggers", [])]
    if _json_out(ctx, output):
        return _echo_json(fn)
    click.echo(describe_text(fn))


def _when(ts) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts)) if ts else "-"


def _snapshot_text(fn: dict) -> str:
    """The ``snapshot`` setting and what became of each version's template (a refusal's reason)."""
    mode = fn.get("snapshot", "off")
    states = fn.get("snapshots") or []
    if fn.get("snapshot_unavailable"):
        return f"{mode}, but unavailable: {fn['snapshot_unavailable']}"
    if not states:
        return mode + (" (a template is made at the next cold start)" if mode == "auto" else "")
    parts = []
    for t in states:
        text = f"version {t['version']} {t['state']}"
        if t["state"] == "ready":
            text += f" ({t.get('memory_bytes', 0) / 1048576:.1f} MB, {t.get('forks', 0)} cold starts forked)"
        elif t.get("reason"):
            text += f": {t['reason']}"
        parts.append(text)
    return f"{mode}; " + "; ".join(parts)


def describe_text(fn: dict) -> str:
    """``faas describe`` for people: settings, code, triggers with URLs, instances, scaling."""
    env = fn.get("environment") or {}
    secrets = fn.get("secrets") or {}
    rows = [
        ("Name", fn["name"]),
        ("Description", fn.get("description") or "-"),
        ("Runtime", f"{fn['runtime']}, handler {fn['handler']}"),
        ("Code", f"version {fn['version']}, sha256 {fn['code_sha256'][:12]}" if fn.get("version") else
         "none yet: faas deploy DIR --name " + fn["name"]),
        ("Memory", f"{fn['memory_mb']} MB, timeout {fn['timeout_s']} s, network {fn.get('network', 'default')}"),
        ("Scaling", f"{fn['concurrency']} request(s) per instance, {fn['min_instances']}..{fn['max_instances']} "
                    f"instances, keep-alive {fn['keep_alive_s']} s"),
        ("Environment", ", ".join(sorted(env)) + " (values: --output json)" if env else "-"),
        ("Secrets", ", ".join(f"{k}={v}" for k, v in sorted(secrets.items())) if secrets else "-"),  # masked: ****
        ("Snapshot", _snapshot_text(fn)),
        ("Created", f"{_when(fn.get('created_at'))}, updated {_when(fn.get('updated_at'))}"),
    ]
    lines = [f"{k + ':':13} {v}" for k, v in rows]
    triggers = fn.get("triggers") or []
    lines.append(f"{'Triggers:':13} {len(triggers) or '-'}")
    for t in triggers:
        if "method" not in t:  # a schedule or queue trigger
            lines.append(f"  {t.get('kind', '-'):7} {t.get('schedule') or t.get('queue') or '-'}  id {t.get('id')}")
            continue
        lines.append(f"  {t['method']:7} {t['path']}" + (f"  {t['url']}" if t.get("url") else "")
                     + (f"  -> {t['function']}" if t.get("function", fn["name"]) != fn["name"] else ""))
    if fn.get("published") or fn.get("aliases"):
        lines.append(f"{'Published:':13} " + (", ".join(str(v) for v in fn.get("published") or []) or "-"))
        for a in fn.get("aliases") or []:
            shares = "".join(f", {w:g} to {v}" for v, w in a["weights"].items())
            lines.append(f"  alias {a['name']} -> {a['version']}{shares}")
    instances = fn.get("instances") or []
    lines.append(f"{'Instances:':13} {len(instances) or '-'}")
    for i in instances:
        executed = i.get("executed_version")
        lines.append(f"  {i['id']}  version {i['version']}"
                     + (f" (published {executed})" if executed and executed != "$LATEST" else "")
                     + f"  on {i.get('node', '-')}  since {_when(i.get('started_at'))}")
    sc = fn.get("scaling") or {}
    if sc:
        lines.append(f"{'Now:':13} " + ", ".join(f"{k} {sc[k]}" for k in ("ready", "starting", "inflight", "waiting")
                                                  if k in sc))
        rest = {k: v for k, v in sc.items() if k not in ("ready", "starting", "inflight", "waiting", "current")}
        if rest:
            lines.append(f"{'Decision:':13} " + ", ".join(f"{k} {v}" for k, v in rest.items()
                                                         if not isinstance(v, (dict, list))))
    return "\n".join(lines)


@main.command()
@click.argument("name", shell_complete=_complete_functions)
@output_option
@click.pass_context
def rm(ctx, name, output):
    """Delete a function, its triggers and its instances."""
    out = _client(ctx).delete_function(name)
    if _json_out(ctx, output):
        return _echo_json(out)
    click.echo(f"deleted {name}")


@main.command()
@click.option("--since", type=float, default=None, help="Seconds ago.")
@output_option
@click.pass_context
def usage(ctx, since, output):
    """Invocations, errors, cold starts and GB-seconds per function."""
    rows = _client(ctx).usage(**({"since": -abs(since)} if since else {}))
    if _json_out(ctx, output):
        return _echo_json(rows)
    click.echo(f"{'FUNCTION':24} {'INVOCATIONS':>11} {'ERRORS':>6} {'COLD':>5} {'GB-SECONDS':>12}")
    for r in rows:
        click.echo(f"{r['function']:24} {r['invocations']:>11} {r['errors']:>6} {r['cold_starts']:>5} {r['gb_seconds']:>12.6f}")


@main.command()
@output_option
@click.pass_context
def doctor(ctx, output):
    """Check this machine and the appliance: runtimes, sandbox, API.

    --output json prints [{"check", "status", "detail"}]; the exit status is 1 when a check fails."""
    import shutil
    import subprocess

    ok = True
    as_json = _json_out(ctx, output)
    results = []

    def say(status, label, detail=""):
        results.append({"check": label, "status": status, "detail": detail})
        if not as_json:
            click.echo(f"[{status}] {label}{': ' + detail if detail else ''}")

    def check(label, good, detail=""):
        nonlocal ok
        ok = ok and good
        say("ok" if good else "FAIL", label, detail)

    check("python3", bool(shutil.which("python3")), sys.version.split()[0])
    node = shutil.which("node")
    ver = subprocess.run([node, "--version"], capture_output=True, text=True).stdout.strip() if node else ""
    check("node (nodejs20 runtime)", bool(node), ver or "not found: apt-get install nodejs")
    from appliance.instances.sandbox import LANGUAGES
    have = [lang for lang, spec in LANGUAGES.items() if shutil.which(spec["command"])]
    missing = [lang for lang in LANGUAGES if lang not in have]
    say("warn" if missing else "ok", "provided runtime languages", f"{', '.join(have) or 'none'} available"
        + (f"; {', '.join(missing)} not found (make system-deps installs them)" if missing else ""))
    from appliance.wiring import sandbox_unavailable
    reason = sandbox_unavailable()
    check("instance sandbox (namespaces, read-only root, own uid per instance)", reason is None,
          reason or "available; instances fork from a runtime zygote")
    if reason is None:
        from appliance.instances import cgroups
        mgr, why = cgroups.detect()
        say("ok" if mgr else "warn", "memory and pids cgroups",
            mgr.describe() if mgr else why + "; instance memory is bounded by rlimits only")
        if mgr is not None:
            mgr.close()
    if reason is None:
        nft = shutil.which("nft")
        say("ok" if nft else "warn", "nftables",
            f"{nft} (the packet filter that keeps instances off this host's services)" if nft else
            "not found: apt-get install nftables, or instances can reach this host's services")
    bwrap = shutil.which("bwrap")
    say("info", "bubblewrap", f"{bwrap or 'not found'} (not needed by the sandbox, which makes the same "
        "namespaces itself; bench/coldstart.py compares against it)")
    try:
        h = _client(ctx).health()
        check("control API", True, f"{ctx.obj['api']} ({h.get('mode')} mode)")
        if h.get("seccomp"):
            active = h["seccomp"].startswith("active")
            say("ok" if active else "warn", "instance seccomp filter", h["seccomp"])
        if h.get("instance_network"):
            filtered = h["instance_network"].startswith("filtered")
            say("ok" if filtered else "warn", "instance network policy", h["instance_network"])
        for note in h.get("notes") or []:
            say("note", note)
    except ApiError as exc:
        check("control API", False, exc.message)
    try:
        settings = Settings.from_env()
    except ApplianceError as exc:
        check("settings", False, exc.message)
        settings = None
    if settings is not None and settings.mode == "cluster":
        from appliance.wiring import cluster_checks

        for label, good, detail in cluster_checks(settings):
            check(label, good, detail)
    if as_json:
        _echo_json(results)
    sys.exit(0 if ok else 1)


# -- cluster: node autoscaler ---------------------------------------------------------------

@main.command("node-autoscaler")
@click.option("--once", is_flag=True, help="One tick, then exit; a scale-in it starts is followed to its end.")
@click.option("--dry-run", is_flag=True, help="Print the plan, one line per step; change nothing "
              "[APPLIANCE_NODE_AUTOSCALER_DRY_RUN].")
@click.option("--interval", type=float, default=None, help="Seconds between ticks [APPLIANCE_NODE_AUTOSCALER_INTERVAL_S].")
@click.option("--print-user-data", is_flag=True, help="Print the user data a new host needs (for the Auto "
              "Scaling group's launch template) and exit.")
def node_autoscaler(once, dry_run, interval, print_user_data):
    """Add and remove cluster hosts through the cloud API (settings: APPLIANCE_NODE_*)."""
    import signal

    from appliance.cluster import node_autoscaler as na
    from appliance.core import logs

    try:
        settings = Settings.from_env(node_autoscaler_dry_run=dry_run or None, node_autoscaler_interval_s=interval)
        if print_user_data:
            click.echo(na.user_data_from_settings(settings), nl=False)
            return
        logs.setup(settings.log_level)
        dry = settings.node_autoscaler_dry_run
        scaler = na.build(settings, echo=click.echo if (dry or once) else None)
    except ApplianceError as exc:
        _fail(f"{exc.code}: {exc.message}")
        raise

    def stop(signum, _frame):
        # The step in progress finishes; a drain in progress lives on in Nomad.
        scaler.stop()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
    if once:
        report = scaler.run_once(wait=True)
        for line in report.errors:
            click.echo(f"error: {line}", err=True)
        sys.exit(0 if report.ok else 1)
    scaler.run(settings.node_autoscaler_interval_s)


if __name__ == "__main__":  # pragma: no cover
    main(prog_name=os.path.basename(sys.argv[0]))
