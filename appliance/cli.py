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
    existing = {(t.get("method"), t.get("path")) for t in api.list_triggers(name)}
    for t in triggers:
        if (t["method"].upper(), t["path"]) not in existing:
            api.add_trigger(name, t["method"], t["path"])
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
@click.option("--runtime", help="python3.11 or nodejs20.")
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
    existing = {(t.get("method"), t.get("path")) for t in api.list_triggers(name)}
    for t in triggers:
        if (t["method"].upper(), t["path"]) not in existing:
            api.add_trigger(name, t["method"], t["path"])
            click.echo(f"Trigger {t['method'].upper()} {t['path']} -> {name}", err=True)
    click.echo(json.dumps(out["function"], indent=2))


@main.group()
def trigger():
    """Triggers: bind METHOD PATH (HTTP) or a schedule to a function."""


@trigger.command("add")
@click.argument("function")
@click.argument("method", required=False)
@click.argument("path", required=False)
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
@click.pass_context
def trigger_add(ctx, function, method, path, asynchronous, schedule, event_json, timezone, disabled, queue,
                batch_size, batching_window, max_concurrency, visibility_timeout, report_batch_item_failures):
    """Add an HTTP trigger (FUNCTION METHOD PATH), a schedule (--schedule EXPR) or a queue source (--queue Q)."""
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
    t = api.add_trigger(function, method, path, "async" if asynchronous else None)
    click.echo(f"{t['method']} {t['path']} -> {t['function']}" + (" (async)" if asynchronous else ""))


@trigger.command("ls")
@click.argument("function", required=False)
@click.pass_context
def trigger_ls(ctx, function):
    for t in _client(ctx).list_triggers(function):
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
        click.echo(f"{t['method']:7} {t['path']:40} {t['function']}"
                   + (f" ({t['invocation']})" if t.get("invocation") else ""))


@trigger.command("rm")
@click.argument("method")
@click.argument("path", required=False)
@click.pass_context
def trigger_rm(ctx, method, path):
    """Remove an HTTP trigger (METHOD PATH) or a schedule (its ID)."""
    if path is None:
        t = _client(ctx).remove_trigger_id(method)["deleted"]
        click.echo(f"removed {t['id']}")
        return
    t = _client(ctx).remove_trigger(method, path)["deleted"]
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


@main.command()
@click.argument("name")
@click.option("--data", default=None, help="The event as JSON [{}].")
@click.option("--verbose", "-v", is_flag=True, help="Also print request id, cold start and timing, and the "
              "stack trace of a failed invocation.")
@click.option("--async", "asynchronous", is_flag=True, help="Queue the event and print its request id (202); "
              "`faas events NAME` shows how it went.")
@click.pass_context
def invoke(ctx, name, data, verbose, asynchronous):
    """Invoke a function directly and print its result.

    A failed invocation prints one error line and exits 1; -v adds the function's stack trace.
    """
    event = {}
    if data:
        try:
            event = json.loads(data)
        except ValueError as exc:
            _fail(f"--data is not valid JSON: {exc}")
    resp = _client(ctx).invoke_raw(name, event, asynchronous=asynchronous)
    if asynchronous and resp.status_code == 202:
        click.echo(resp.json()["requestId"])
        return
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
    bwrap = shutil.which("bwrap")
    click.echo(f"[info] bubblewrap: {bwrap or 'not found'} (not needed by the sandbox, which makes the same "
               "namespaces itself; bench/coldstart.py compares against it)")
    try:
        h = _client(ctx).health()
        check("control API", True, f"{ctx.obj['api']} ({h.get('mode')} mode)")
        if h.get("seccomp"):
            active = h["seccomp"].startswith("active")
            click.echo(f"[{'ok' if active else 'warn'}] instance seccomp filter: {h['seccomp']}")
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
