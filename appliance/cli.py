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

from appliance.client import DEFAULT_API, ApiError, ApplianceClient, read_function_json
from appliance.config import Settings
from appliance.core.errors import ApplianceError


def _client(ctx) -> ApplianceClient:
    return ApplianceClient(ctx.obj["api"])


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
            _fail(f"{exc.code}: {exc.message}{where}")
        except ApplianceError as exc:
            _fail(f"{exc.code}: {exc.message}")


@click.group(cls=_Group)
@click.option("--api", default=DEFAULT_API, show_default=True, envvar="FAAS_API", help="Control-plane API URL.")
@click.pass_context
def main(ctx, api):
    """FaaS Appliance: deploy functions, bind HTTP triggers, call them."""
    ctx.ensure_object(dict)
    ctx.obj["api"] = api


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
            _fail(f"cannot listen on {settings.host} ({ports}): {exc.strerror}; stop what uses it, or pick "
                  "other ports with --edge-port and --api-port (make up EDGE_PORT=... API_PORT=...)")
        _fail(f"the appliance could not start: {exc}")
    except ApplianceError as exc:  # a setting that cannot be honoured here (APPLIANCE_INSTANCE_NET_FILTER=on)
        app.stop()
        _fail(f"{exc.code}: {exc.message}")
    edge = f"http://{settings.host}:{app.ports['edge']}" if "edge" in app.ports else None
    api = f"http://{settings.host}:{app.ports['control']}" if "control" in app.ports else None
    click.echo(f"FaaS Appliance is up ({settings.mode} mode). Edge router: {edge or '-'}  API: {api or '-'}")
    if example and api:
        try:
            ex = _deploy_example(ApplianceClient(api), Path(example))
            if ex and edge:
                click.echo(f"Example deployed. Try:  curl {edge}{ex}")
        except ApiError as exc:
            click.echo(f"error: the example did not deploy: {exc.code}: {exc.message}", err=True)
    click.echo("Stop with Ctrl-C.")
    app.wait()


def _deploy_example(api: ApplianceClient, directory: Path) -> str | None:
    cfg = read_function_json(directory)
    name = cfg.pop("name", directory.name)
    triggers = cfg.pop("triggers", [])
    api.deploy(name, directory, **cfg)
    path = None
    existing = {(t["method"], t["path"]) for t in api.list_triggers(name)}
    for t in triggers:
        if (t["method"].upper(), t["path"]) not in existing:
            api.add_trigger(name, t["method"], t["path"], auth=t.get("auth"), cors=t.get("cors"))
        path = path or t["path"]
    return path


def _settings(host, edge_port, api_port, data_dir) -> Settings:
    try:
        return Settings.from_env(host=host, edge_port=edge_port, api_port=api_port, data_dir=data_dir)
    except ApplianceError as exc:
        _fail(exc.message)
        raise


@main.command()
@click.option("--host", default=None, help="Address to listen on [127.0.0.1].")
@click.option("--edge-port", type=int, default=None, help="Edge router port [8080].")
@click.option("--api-port", type=int, default=None, help="Control-plane API port [8081].")
@click.option("--data-dir", default=None, help="Where state is kept [.faas].")
@click.option("--example", default=None, help="A function directory to deploy once up (e.g. examples/hello).")
def up(host, edge_port, api_port, data_dir, example):
    """Run the appliance (edge router + API) in the foreground."""
    _run(_settings(host, edge_port, api_port, data_dir), ("edge", "control"), example)


@main.command()
@click.option("--role", type=click.Choice(["edge", "control", "all"]), default="all", show_default=True)
@click.option("--host", default=None)
@click.option("--edge-port", type=int, default=None)
@click.option("--api-port", type=int, default=None)
@click.option("--data-dir", default=None)
def serve(role, host, edge_port, api_port, data_dir):
    """Run one role of the appliance (for systemd units and Nomad jobs)."""
    roles = ("edge", "control") if role == "all" else (role,)
    _run(_settings(host, edge_port, api_port, data_dir), roles, None)


@main.command(hidden=True)
def instance():
    """Run one function instance under Nomad (fetch code by digest, then exec the runtime)."""
    from appliance.instances.launcher import main as launch

    launch()


# -- functions ---------------------------------------------------------------------------

def _parse_env(pairs) -> dict:
    env = {}
    for p in pairs:
        if "=" not in p:
            _fail(f"--env takes NAME=value, got {p!r}")
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
@click.option("--env", "env", multiple=True, help="NAME=value (repeatable).")
@click.option("--description")
@click.pass_context
def deploy(ctx, source, name, env, **opts):
    """Create or update a function from a directory, a zip or one source file."""
    cfg = read_function_json(source)
    triggers = cfg.pop("triggers", [])
    name = name or cfg.pop("name", None) or Path(source).resolve().name.removesuffix(".zip")
    cfg.pop("name", None)
    cfg.update({k: v for k, v in opts.items() if v is not None})
    if env:
        cfg["environment"] = {**cfg.get("environment", {}), **_parse_env(env)}
    api = _client(ctx)
    click.echo(f"Packaging {source} ...", err=True)
    t0 = time.monotonic()
    out = api.deploy(name, source, **cfg)
    v = out["version"]
    click.echo(f"Deployed {name} version {v['version']} ({v['size']} bytes, {v['files']} files, "
               f"sha256 {v['digest'][:12]}) in {time.monotonic() - t0:.1f}s", err=True)
    for w in out.get("warnings", []):
        click.echo(f"warning: {w}", err=True)
    existing = {(t["method"], t["path"]) for t in api.list_triggers(name)}
    for t in triggers:
        if (t["method"].upper(), t["path"]) not in existing:
            api.add_trigger(name, t["method"], t["path"], auth=t.get("auth"), cors=t.get("cors"))
            click.echo(f"Trigger {t['method'].upper()} {t['path']} -> {name}", err=True)
    click.echo(json.dumps(out["function"], indent=2))


@main.group()
def trigger():
    """HTTP triggers: bind METHOD PATH to a function."""


@trigger.command("add")
@click.argument("function")
@click.argument("method")
@click.argument("path")
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
@click.pass_context
def trigger_add(ctx, function, method, path, auth_type, issuer, audience, public_key, jwks_file, jwks_url, algorithm,
                leeway, cors_origin, cors_method, cors_header, cors_expose, cors_max_age, cors_credentials):
    """Bind METHOD PATH to FUNCTION, optionally with authentication and CORS."""
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
    t = _client(ctx).add_trigger(function, method, path, auth=auth, cors=cors)
    note = f" (auth: {t['auth']['type']}{', cors' if t.get('cors') else ''})" if auth_type != "none" or cors else ""
    click.echo(f"{t['method']} {t['path']} -> {t['function']}{note}")
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
@click.argument("function", required=False)
@click.pass_context
def trigger_ls(ctx, function):
    for t in _client(ctx).list_triggers(function):
        extra = t.get("auth", {}).get("type", "none") + (" cors" if t.get("cors") else "")
        click.echo(f"{t['method']:7} {t['path']:40} {t['function']:20} {extra}")


@trigger.command("rm")
@click.argument("method")
@click.argument("path")
@click.pass_context
def trigger_rm(ctx, method, path):
    t = _client(ctx).remove_trigger(method, path)["deleted"]
    click.echo(f"removed {t['method']} {t['path']}")


@main.command()
@click.argument("name")
@click.option("--data", default=None, help="The event as JSON [{}].")
@click.option("--verbose", "-v", is_flag=True, help="Also print request id, cold start and timing, and the "
              "stack trace of a failed invocation.")
@click.pass_context
def invoke(ctx, name, data, verbose):
    """Invoke a function directly and print its result.

    A failed invocation prints one error line and exits 1; -v adds the function's stack trace.
    """
    event = {}
    if data:
        try:
            event = json.loads(data)
        except ValueError as exc:
            _fail(f"--data is not valid JSON: {exc}")
    resp = _client(ctx).invoke_raw(name, event)
    if verbose:
        click.echo(f"request id: {resp.headers.get('X-Request-Id')}  cold: {resp.headers.get('X-Faas-Cold-Start')}  "
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
    click.echo(json.dumps(body) if not isinstance(body, str) else body)


@main.command()
@click.argument("name")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new invocations.")
@click.option("--since", type=float, default=None, help="Seconds ago (e.g. 300) to start from.")
@click.option("--status", default=None, help="ok, error, timeout, throttled or unavailable.")
@click.option("--limit", type=int, default=100)
@click.pass_context
def logs(ctx, name, follow, since, status, limit):
    """Print a function's invocations with their log lines and cold-start phases."""
    api = _client(ctx)
    params = {"limit": limit}
    if since is not None:
        params["since"] = -abs(since)
    if status:
        params["status"] = status
    out = api.logs(name, **params)
    for line in out["lines"]:
        click.echo(line["line"])
    after = out["next"]
    try:
        while follow:
            time.sleep(1.0)
            out = api.logs(name, after=after, limit=1000, **({"status": status} if status else {}))
            for line in out["lines"]:
                click.echo(line["line"])
            after = out["next"] or after
    except KeyboardInterrupt:
        pass  # Ctrl-C is how a follow ends: not an error


@main.command("ls")
@click.pass_context
def list_functions(ctx):
    """List functions."""
    fns = _client(ctx).list_functions()
    click.echo(f"{'NAME':24} {'RUNTIME':11} {'VERSION':7} {'MEMORY':6} {'TIMEOUT':7} HANDLER")
    for f in fns:
        click.echo(f"{f['name']:24} {f['runtime']:11} {f['version']:<7} {f['memory_mb']:<6} {f['timeout_s']:<7} {f['handler']}")


@main.command()
@click.argument("name")
@click.pass_context
def describe(ctx, name):
    """Show a function's settings, triggers, instances and scaling state."""
    click.echo(json.dumps(_client(ctx).get_function(name), indent=2))


@main.command()
@click.argument("name")
@click.pass_context
def rm(ctx, name):
    """Delete a function, its triggers and its instances."""
    _client(ctx).delete_function(name)
    click.echo(f"deleted {name}")


@main.command()
@click.option("--since", type=float, default=None, help="Seconds ago.")
@click.pass_context
def usage(ctx, since):
    """Invocations, errors, cold starts and GB-seconds per function."""
    rows = _client(ctx).usage(**({"since": -abs(since)} if since else {}))
    click.echo(f"{'FUNCTION':24} {'INVOCATIONS':>11} {'ERRORS':>6} {'COLD':>5} {'GB-SECONDS':>12}")
    for r in rows:
        click.echo(f"{r['function']:24} {r['invocations']:>11} {r['errors']:>6} {r['cold_starts']:>5} {r['gb_seconds']:>12.6f}")


@main.command()
@click.pass_context
def doctor(ctx):
    """Check this machine and the appliance: runtimes, sandbox, API."""
    import shutil
    import subprocess

    ok = True

    def check(label, good, detail=""):
        nonlocal ok
        ok = ok and good
        click.echo(f"[{'ok' if good else 'FAIL'}] {label}{': ' + detail if detail else ''}")

    check("python3", bool(shutil.which("python3")), sys.version.split()[0])
    node = shutil.which("node")
    ver = subprocess.run([node, "--version"], capture_output=True, text=True).stdout.strip() if node else ""
    check("node (nodejs20 runtime)", bool(node), ver or "not found: apt-get install nodejs")
    from appliance.instances.sandbox import LANGUAGES
    have = [lang for lang, spec in LANGUAGES.items() if shutil.which(spec["command"])]
    missing = [lang for lang in LANGUAGES if lang not in have]
    click.echo(f"[{'warn' if missing else 'ok'}] provided runtime languages: {', '.join(have) or 'none'} available"
               + (f"; {', '.join(missing)} not found (make system-deps installs them)" if missing else ""))
    from appliance.wiring import sandbox_unavailable
    reason = sandbox_unavailable()
    check("instance sandbox (namespaces, read-only root, own uid per instance)", reason is None,
          reason or "available; instances fork from a runtime zygote")
    if reason is None:
        from appliance.instances import cgroups
        mgr, why = cgroups.detect()
        click.echo(f"[{'ok' if mgr else 'warn'}] memory and pids cgroups: "
                   f"{mgr.describe() if mgr else why + '; instance memory is bounded by rlimits only'}")
        if mgr is not None:
            mgr.close()
    if reason is None:
        nft = shutil.which("nft")
        click.echo(f"[{'ok' if nft else 'warn'}] nftables: "
                   + (f"{nft} (the packet filter that keeps instances off this host's services)" if nft else
                      "not found: apt-get install nftables, or instances can reach this host's services"))
    bwrap = shutil.which("bwrap")
    click.echo(f"[info] bubblewrap: {bwrap or 'not found'} (not needed by the sandbox, which makes the same "
               "namespaces itself; bench/coldstart.py compares against it)")
    try:
        h = _client(ctx).health()
        check("control API", True, f"{ctx.obj['api']} ({h.get('mode')} mode)")
        if h.get("seccomp"):
            active = h["seccomp"].startswith("active")
            click.echo(f"[{'ok' if active else 'warn'}] instance seccomp filter: {h['seccomp']}")
        if h.get("instance_network"):
            filtered = h["instance_network"].startswith("filtered")
            click.echo(f"[{'ok' if filtered else 'warn'}] instance network policy: {h['instance_network']}")
        for note in h.get("notes") or []:
            click.echo(f"[note] {note}")
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
