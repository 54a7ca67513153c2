"""The control-plane REST API under ``/v1``: functions, code, triggers, invocations, logs, usage.

Handlers are thin: parse, call the FunctionStore / Invoker / RecordStore, shape JSON. Every error
is an ApplianceError rendered by ``http_common.error_response``.
"""

from __future__ import annotations

import io
import json
import logging
import time
import zipfile
from pathlib import Path

from flask import Flask, Response, g, redirect, request, send_from_directory
from werkzeug.routing import BaseConverter

from appliance.control import layers_view, versions_view
from appliance.control.auth import Guard, UnsupportedMediaType, allowed_hosts, require_content_type
from appliance.control import openapi
from appliance.control.invoke import invocation_type, invoke_response, read_event
from appliance.control.records_view import RecordsView, decode_cursor, encode_cursor, next_page
from appliance.control.scaling_view import ScalingView
from appliance.core import tokens as tokens_mod
from appliance.core.async_invoke import STATES as ASYNC_STATES
from appliance.core.codepkg import check_entry_name
from appliance.core.scheduled_min import effective_min
from appliance.core.errors import ConsoleNotBuilt, NotFound, PayloadTooLarge, ValidationError
from appliance.core.function_store import ensure_name
from appliance.core.model import FunctionConfig, InstanceSpec
from appliance.core.routing import split_target, validate_qualifier
from appliance.web import correlation_id_of, install_error_handlers, json_response, request_id
from appliance.wiring import Components

log = logging.getLogger("appliance.control.audit")
JSON = "application/json"
#: What a web page may POST anywhere without the browser asking first: never a body the API reads.
BROWSER_SIMPLE_TYPES = ("text/plain", "application/x-www-form-urlencoded")
ZIP_TYPES = ("application/zip", "application/x-zip-compressed", "application/octet-stream")
CONSOLE_DIR = Path(__file__).resolve().parent / "console"
#: The console's bundle (CodeMirror, uPlot and our code), built from console/src by `make console`.
CONSOLE_DIST = CONSOLE_DIR / "dist"
#: Files the online editor shows: text, at most this size each.
EDITABLE_MAX_BYTES = 256 << 10
#: Deepest nesting of a JSON body the API reads.
MAX_JSON_DEPTH = 64


def check_console_built(filename: str, dist: Path) -> None:
    """Raise ConsoleNotBuilt when ``filename`` (the page or a bundle file) needs a bundle that was
    never built: the page alone would load and stay blank. The stylesheet is served either way."""
    if filename in ("index.html", "") or filename.startswith("dist/"):
        if not (dist / "console.js").is_file():
            raise ConsoleNotBuilt("the console's bundle is not built: run `make console` (npm ci and esbuild from "
                                  "appliance/control/console/src/package-lock.json), then reload")


def _json_body() -> dict:
    require_content_type(JSON)
    raw = request.get_data(cache=True)
    if not raw.strip():
        raise ValidationError("the request body must be a JSON object", field="body")
    data = parse_json(raw)
    if not isinstance(data, dict):
        raise ValidationError("the request body must be a JSON object", field="body")
    return data


def parse_json(raw: bytes):
    """A JSON body, or 400 with why: not JSON, not UTF-8, nested past MAX_JSON_DEPTH (the
    decoder recurses and gave a 500 at 100,000 levels), or text with lone surrogates."""
    depth = _max_depth(raw)
    if depth > MAX_JSON_DEPTH:
        raise ValidationError(f"the request body nests {depth} levels deep; the limit is {MAX_JSON_DEPTH}",
                              field="body")
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise ValidationError(f"the request body is not valid JSON: {str(exc)[:200]}", field="body") from None
    if b"\\u" in raw and not _text_only(data):
        raise ValidationError("the request body holds a lone surrogate (\\ud800-\\udfff); send valid Unicode text",
                              field="body")
    return data


def _max_depth(raw: bytes) -> int:
    """How deep brackets nest (an upper bound: brackets inside strings count too), in linear time."""
    depth = deepest = 0
    for b in raw.translate(None, _NOT_BRACKETS):
        if b in b"[{":
            depth += 1
            if depth > deepest:
                deepest = depth
        else:
            depth -= 1
    return deepest


_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def _text_only(value, depth: int = 0) -> bool:
    if isinstance(value, str):
        try:
            value.encode("utf-8")
            return True
        except UnicodeEncodeError:
            return False
    if isinstance(value, dict):
        return all(_text_only(k) and _text_only(v, depth + 1) for k, v in value.items())
    if isinstance(value, list):
        return all(_text_only(v, depth + 1) for v in value)
    return True


def _float_arg(name: str) -> float | None:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return None
    try:
        return float(raw)
    except ValueError:
        raise ValidationError(f"{name} must be a number (seconds since the epoch, or negative for "
                              f"seconds ago); got {raw!r}", field=name) from None


def _int_arg(name: str, default: int) -> int:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValidationError(f"{name} must be an integer; got {raw!r}", field=name) from None


def _since() -> float | None:
    since = _float_arg("since")
    if since is not None and since < 0:
        since = time.time() + since
    return since


def attach_views(c: Components) -> None:
    """What the control API shows of every edge: records merged across edges (cluster mode: the
    edges listed in Consul) and the deciding edge's scaling. Built here, where they are read."""
    if c.records_view is None:
        c.records_view = RecordsView(c.records, c.edge_directory.edges if c.edge_directory is not None else None,
                                     credential=c.internal_token)
        c.add_closer(c.records_view.close)
    if c.scaling_view is None:
        c.scaling_view = ScalingView(c.scaler, c.leadership, credential=c.internal_token)
        c.add_closer(c.scaling_view.close)


class TriggerIdConverter(BaseConverter):
    """A schedule or queue trigger's id (``schedule-1a2b3c4d5e``): never a word of its own, so
    ``/v1/triggers/keys`` is only the keys' route (and its Allow header lists only their methods)."""

    regex = r"[a-z]+-[0-9a-z]+"


def create_control_app(c: Components) -> Flask:
    app = Flask("appliance.control")
    app.url_map.converters["trigger_id"] = TriggerIdConverter
    app.config["MAX_CONTENT_LENGTH"] = c.settings.max_code_bytes + (1 << 20)
    install_error_handlers(app)
    store = c.store
    attach_views(c)
    s = c.settings
    hosts = allowed_hosts(s.allowed_hosts, [s.api_listen], [s.advertise_addr, s.node_name])
    guard = Guard(c.tokens, hosts)
    guard.install(app)
    need = guard.require

    def _after_code_change(name: str) -> None:
        """Pre-warm a new version: unpack and byte-compile now; start min_instances before it
        takes traffic (old-version instances are then drained by the keep-alive loop)."""
        record = store.get(name, fresh=True)
        if not record.version:
            return
        prepare = getattr(c.scheduler, "prepare", None)
        if prepare:
            prepare(InstanceSpec.of(record))
        c.scaler.prewarm(record)

    def _collect_code() -> None:
        """Remove unpacked code no function points at (old versions, deleted functions) once no
        instance runs it; a version's package stays (it can be downloaded, and unpacked again)."""
        collect = getattr(c.scheduler, "collect_code", None)
        if collect is not None:
            # Layer packages stay unpacked while published (functions list them by version).
            layer_digests = {doc.get("digest") for _, doc, _ in store.meta.list("layers/")}
            # Published versions stay unpacked too: their cold starts must not unpack again.
            layer_digests |= {doc.get("digest") for _, doc, _ in store.meta.list("published/")}
            collect({r.digest for r in store.list() if r.digest} | layer_digests)

    def _prewarm(pending) -> str | None:
        """Before a new version takes traffic: unpack and byte-compile it, and start its min_instances
        (bounded by the start timeout; the version is published either way)."""
        prepare = getattr(c.scheduler, "prepare", None)
        if prepare:
            prepare(InstanceSpec.of(pending))
        want = min(pending.config.min_instances, pending.config.max_instances)
        if not want:
            return None
        c.activator.ensure_min(InstanceSpec.of(pending, reserved=True), min_instances=want,
                               max_instances=pending.config.max_instances)
        ready = c.activator.pool(pending.name).wait_ready(pending.version, want, c.settings.start_timeout_s)
        if ready < want:
            return (f"only {ready} of {want} min_instances of version {pending.version} were ready before it "
                    "started taking traffic; see the function's logs")
        return None

    @app.get("/v1/health")
    @app.get("/_/health")
    def health():
        """Public, so a load balancer may probe it; the details only with a token."""
        if g.get("token") is None:
            return json_response({"status": "ok", "role": "control"})
        return json_response({"status": "ok", "role": "control", "mode": c.settings.mode, "notes": c.notes,
                              "edge_port": c.ports.get("edge"), "seccomp": c.seccomp,
                              "instance_network": c.instance_network,
                              "instance_uids": [c.instance_uids.start, c.instance_uids.stop - 1]})

    # -- tokens --------------------------------------------------------------------------

    @app.get("/v1/tokens")
    def list_tokens():
        need("admin")
        return json_response({"tokens": [t.to_api() for t in sorted(c.tokens.list(fresh=True), key=lambda t: t.name)]})

    @app.post("/v1/tokens")
    def create_token():
        who = need("admin")
        name, scope, functions, expires_at = tokens_mod.validate_request(_json_body(), time.time())
        token, secret = c.tokens.create(name, scope, functions=functions, expires_at=expires_at, created_by=who.name)
        log.info("event=token_created token=%s scope=%s functions=%s by=%s", name, scope, functions or "*", who.name)
        return json_response({**token.to_api(), "token": secret}, 201, {"Cache-Control": "no-store"})

    @app.delete("/v1/tokens/<name>")
    def revoke_token(name: str):
        who = need("admin")
        token = c.tokens.revoke(name)
        log.info("event=token_revoked token=%s by=%s", token.name, who.name)
        return json_response({"revoked": token.to_api()})

    @app.get("/metrics")
    def metrics():
        """Prometheus text format (appliance/backends/prometheus_metrics.py). A normal route: whatever the
        before_request checks demand of a read applies to it too."""
        need("read")
        body, ctype = c.metrics.render()
        return Response(body, content_type=ctype)

    @app.get("/v1/openapi.json")
    def openapi_document():
        """The API's contract (appliance/control/openapi.py), with this server as its server."""
        need("read")
        return json_response(openapi.document(request.host_url.rstrip("/"), auth_required=True))

    # -- web console (static; it uses the API below) -----------------------------------

    @app.get("/")
    def root():
        return redirect("/console/", code=302)

    @app.get("/console/")
    @app.get("/console/<path:filename>")
    def console(filename: str = "index.html"):
        try:
            check_console_built(filename, CONSOLE_DIST)
        except ConsoleNotBuilt as exc:
            if filename != "index.html":
                raise
            # A browser opening the console reads the reason on the page, not a blank one.
            page = f"<!doctype html><title>FaaS Appliance</title><h1>The console is not built</h1><p>{exc.message}</p>"
            return Response(page, 503, mimetype="text/html")
        return send_from_directory(CONSOLE_DIR, filename, max_age=0)

    # -- functions -----------------------------------------------------------------------

    @app.get("/v1/functions")
    def list_functions():
        need("read")
        return json_response({"functions": [r.to_api() for r in store.list() if guard.visible(r.name)]})

    @app.post("/v1/functions")
    def create_function():
        data = _json_body()
        need("deploy", data.get("name") if isinstance(data.get("name"), str) else "")
        config = FunctionConfig.from_request(data)
        record = store.create(config)
        return json_response(record.to_api(), 201, {"Location": f"/v1/functions/{record.name}"})

    @app.get("/v1/functions/<name>")
    def get_function(name: str):
        need("read", name)
        record = store.get(ensure_name(name), fresh=True)
        out = record.to_api()
        out["triggers"] = [t.to_dict() for t in store.triggers(function=name)] + c.event_triggers.list(name)
        out["published"] = list(record.routing.published)
        out["aliases"] = [a.to_api(name) for a in sorted(record.routing.aliases.values(), key=lambda a: a.name)]
        out["instances"] = [i.to_api() for i in c.scheduler.instances(name)]
        snapshots = getattr(c.scheduler, "snapshots", None)  # this host's templates (embedded mode)
        out["snapshots"] = snapshots(name) if snapshots else []
        if record.config.snapshot == "auto":
            why = getattr(c.scheduler, "snapshots_unavailable", None)
            why = why() if why else "cluster mode does not fork cold starts from snapshots (docs/cluster.md)"
            if why:
                out["snapshot_unavailable"] = why
        pool = c.activator.pool(name)
        with pool.lock:  # what this process sees; the decision below is the deciding edge's
            here = {"ready": len(pool.slots), "starting": pool.starting, "waiting": len(pool.waiters),
                    "inflight": sum(s.inflight for s in pool.slots.values()), "current": pool._live_count()}
        decision = c.scaling_view.get(name)
        if decision.get("current") is None:
            decision.pop("current")
        out["scaling"] = {**here, **decision}
        out["queue_sources"] = c.queue_poller.stats(name)  # this process's pollers of each queue trigger
        if record.config.min_instances_schedule:
            n, action = effective_min(record.config.min_instances_schedule, record.config.min_instances, time.time())
            out["min_instances_in_force"] = {"min_instances": n, "set_by": action}
        return json_response(out)

    @app.route("/v1/functions/<name>", methods=["PUT", "PATCH"])
    def update_function(name: str):
        need("deploy", name)
        record = store.update(ensure_name(name), _json_body())
        if record.version:
            _after_code_change(name)
        return json_response(record.to_api())

    @app.delete("/v1/functions/<name>")
    def delete_function(name: str):
        need("deploy", name)
        record = store.delete(ensure_name(name))
        c.event_triggers.remove_function(name)
        c.scaler.remove_function(name)
        c.records.forget(name)  # this edge's; other edges' older records are hidden by created_at below
        _collect_code()
        return json_response({"deleted": record.name})

    # -- code ----------------------------------------------------------------------------

    @app.route("/v1/functions/<name>/code", methods=["PUT", "POST"])
    def upload_code(name: str):
        need("deploy", name)
        name = ensure_name(name)
        filename = request.args.get("filename")
        ctype = (request.mimetype or "").lower()
        if ctype in BROWSER_SIMPLE_TYPES:
            raise UnsupportedMediaType(f"Content-Type {ctype} is not a code package: send application/zip, multipart "
                                       "form data, JSON, or a source file with its own type and ?filename=index.py",
                                       field="Content-Type")
        if ctype == "multipart/form-data":
            upload = request.files.get("code") or request.files.get("file")
            if upload is None:
                raise ValidationError("multipart upload needs a file field named 'code' (a zip or a source file)",
                                      field="code")
            data = upload.read()
            if (upload.filename or "").lower().endswith(".zip") or data[:4] == b"PK\x03\x04":
                filename = None
            else:
                filename = filename or upload.filename
        elif ctype == "application/json":
            body = _json_body()
            files = body.get("files")
            if not isinstance(files, dict) or not files:
                raise ValidationError('a JSON upload is {"files": {"index.py": "<source>"}}', field="files")
            data = _zip_files(files)
            filename = None
        else:
            data = request.get_data(cache=False)
            if filename is None and ctype not in ZIP_TYPES and ctype and not data[:4] == b"PK\x03\x04":
                raise ValidationError(f"Content-Type {ctype!r} is not a zip: send application/zip, multipart "
                                      "form data, or a source file with ?filename=index.py", field="code")
        record, version, warnings = store.upload_code(name, data, filename=filename, before_publish=_prewarm,
                                                      prepare=getattr(c.scheduler, "prepare_digest", None))
        _after_code_change(name)
        _collect_code()
        return json_response({"function": record.to_api(), "version": version.to_dict(), "warnings": warnings}, 201)

    @app.get("/v1/functions/<name>/code")
    def download_code(name: str):
        need("read", name)
        record = store.get(ensure_name(name), fresh=True)
        version = _int_arg("version", record.version)
        if not version:
            raise NotFound(f"function {name!r} has no code yet")
        v = store.version(name, version)
        return Response(store.code(v.digest), mimetype="application/zip",
                        headers={"Content-Disposition": f'attachment; filename="{name}-v{version}.zip"',
                                 "X-Code-Sha256": v.digest})

    @app.get("/v1/functions/<name>/files")
    def files(name: str):
        """The text files of a version, for the online editor (binary and large files left out)."""
        need("read", name)
        record = store.get(ensure_name(name), fresh=True)
        version = _int_arg("version", record.version)
        if not version:
            return json_response({"version": 0, "files": {}, "omitted": []})
        v = store.version(name, version)
        out, omitted = {}, []
        with zipfile.ZipFile(io.BytesIO(store.code(v.digest))) as zf:
            for info in zf.infolist():
                if info.is_dir():
                    continue
                if info.file_size > EDITABLE_MAX_BYTES:
                    omitted.append(info.filename)
                    continue
                try:
                    out[info.filename] = zf.read(info).decode("utf-8")
                except UnicodeDecodeError:
                    omitted.append(info.filename)
        return json_response({"version": version, "files": out, "omitted": omitted})

    @app.get("/v1/functions/<name>/versions")
    def versions(name: str):
        need("read", name)
        store.get(ensure_name(name))
        return json_response({"versions": [v.to_dict() for v in store.versions(name)]})

    # -- invocations -----------------------------------------------------------------------

    @app.post("/v1/functions/<name>/invocations")
    def invoke(name: str):
        # NAME:QUALIFIER in the path, or ?qualifier= (a version number, an alias or $LATEST).
        name, qualifier = split_target(name)
        if request.args.get("qualifier") not in (None, ""):
            if qualifier is not None:
                raise ValidationError("give the qualifier once: in the path (NAME:QUALIFIER) or as ?qualifier=",
                                      field="qualifier")
            qualifier = request.args["qualifier"]
        need("invoke", name)  # the token's function pattern applies to the bare name
        qualifier = validate_qualifier(qualifier)
        require_content_type(JSON)
        kind = invocation_type(request.headers.get("X-Amz-Invocation-Type"), request.args.get("type"))
        target = f"{ensure_name(name)}:{qualifier}" if qualifier else ensure_name(name)
        if qualifier and kind == "Event":
            store.published.check_target(target)  # 404 now, not at the event's first attempt
        return invoke_response(c, target, read_event(c.settings.max_event_bytes), kind)

    @app.get("/v1/functions/<name>/events")
    def events(name: str):
        """Asynchronous events of a function, newest first, and counts per state. Events sent to a
        version or an alias are listed under that target (``NAME:live``), as they were sent."""
        base, qualifier = split_target(name)
        need("records", base)
        store.get(ensure_name(base))
        name = f"{base}:{validate_qualifier(qualifier)}" if validate_qualifier(qualifier) else base
        state = request.args.get("status") or request.args.get("state") or None
        if state is not None and state not in ASYNC_STATES:
            raise ValidationError(f"status must be one of {', '.join(ASYNC_STATES)}; got {state!r}", field="status")
        limit = _int_arg("limit", 50)
        if not 1 <= limit <= 1000:
            raise ValidationError(f"limit must be from 1 to 1000; got {limit}", field="limit")
        return json_response({"events": c.async_runner.queue.list(name, state=state, limit=limit),
                              "counts": c.async_runner.queue.counts(name)})

    @app.post("/v1/queues/<queue>/messages")
    def send_message(queue: str):
        """Send one message (the body, as text) to an embedded queue or, with SQS settings, an SQS queue."""
        from appliance.core.queue_source import validate_queue
        need("invoke")
        validate_queue(queue)
        body = request.get_data(cache=False)
        if len(body) > 256 << 10:
            raise PayloadTooLarge("a message is at most 262144 bytes")
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise ValidationError("a message must be UTF-8 text", field="body") from None
        return json_response({"messageId": c.queues.pick(queue).send(queue, text)}, 201)

    @app.get("/v1/queues/<queue>/messages")
    def queue_messages(queue: str):
        """Messages an async destination of kind ``queue`` sent to an embedded queue (``?delete=1`` takes them)."""
        need("read")
        limit = _int_arg("limit", 10)
        if not 1 <= limit <= 1000:
            raise ValidationError(f"limit must be from 1 to 1000; got {limit}", field="limit")
        messages = getattr(c.queues.embedded, "messages", None)
        if messages is None:
            raise NotFound("this appliance has no embedded queues")
        return json_response({"messages": messages(queue, limit, delete=request.args.get("delete") in ("1", "true"))})

    def _since_created(name: str) -> float:
        """``since``, never before the function was created: a function deleted and made again
        under the same name shows none of the old one's records."""
        created = store.get(ensure_name(name)).created_at
        since = _since()
        return created if since is None else max(since, created)

    @app.get("/v1/functions/<name>/invocations")
    def invocations(name: str):
        need("records", name)
        since = _since_created(name)
        c.records_view.flush(2.0)
        limit = _int_arg("limit", 50)
        rows = c.records_view.query(name, since=since, status=request.args.get("status") or None,
                                    limit=limit, request_id=request.args.get("request_id") or None,
                                    before=decode_cursor(request.args.get("before"), "before"),
                                    max_bytes=c.settings.max_answer_bytes)
        # Answers are bounded in rows and in bytes; older ones: ?before=<next>, until an empty page.
        nxt = encode_cursor(next_page(rows, decode_cursor(request.args.get("before"), "before"))) if rows else None
        return json_response({"invocations": rows, "next": nxt})

    @app.get("/v1/functions/<name>/logs")
    def logs(name: str):
        need("records", name)
        since = _since_created(name)
        c.records_view.flush(2.0)
        cursor = decode_cursor(request.args.get("after"))
        rows = c.records_view.query(name, since=since, status=request.args.get("status") or None,
                                    limit=_int_arg("limit", 100), after=cursor, max_bytes=c.settings.max_answer_bytes)
        if cursor is None:
            rows.reverse()  # oldest first reads naturally
        lines = []
        for r in rows:
            head = (f"START RequestId: {r['request_id']} Version: {r['version']}"
                    + (f" Cold: {r['cold_cause']} Init: {r['init_ms']:.1f} ms" if r["cold"] else ""))
            lines.append({"seq": r["seq"], "request_id": r["request_id"], "ts": r["started_at"], "line": head})
            for line in r["logs"]:
                lines.append({"seq": r["seq"], "request_id": r["request_id"], "ts": r["started_at"], "line": line})
            tail = (f"END RequestId: {r['request_id']} Status: {r['status']}"
                    + (f" ({r['error_type']})" if r["error_type"] else "")
                    + f" Duration: {r['duration_ms']:.2f} ms Billed GB-s: {r['billed_gb_s']:.6f}"
                    + " Phases: " + " ".join(f"{k}={v:.2f}" for k, v in r["phases"].items()))
            lines.append({"seq": r["seq"], "request_id": r["request_id"], "ts": r["started_at"], "line": tail})
        nxt = dict(cursor or {})
        for r in rows:
            nxt[r["edge"]] = max(nxt.get(r["edge"], 0), r["seq"])
        return json_response({"lines": lines, "next": encode_cursor(nxt)})

    @app.get("/v1/functions/<name>/instances")
    def instances(name: str):
        need("read", name)
        store.get(ensure_name(name))
        return json_response({"instances": [i.to_api() for i in c.scheduler.instances(name)]})

    @app.get("/v1/functions/<name>/series")
    def series(name: str):
        """Chart points of one function over a window: a fixed number, whatever the traffic."""
        need("records", name)
        store.get(ensure_name(name))
        c.records_view.flush(2.0)
        return json_response(c.records_view.series(name, request.args.get("window") or "1h", time.time()))

    @app.get("/v1/usage")
    def usage():
        fn = request.args.get("function") or None
        need("records", fn)
        c.records_view.flush(2.0)
        since = _since_created(fn) if fn else _since()
        rows = c.records_view.usage(fn, since=since)
        return json_response({"usage": [u for u in rows if guard.visible(u["function"])]})

    # -- triggers ----------------------------------------------------------------------------

    @app.get("/v1/triggers")
    def list_triggers():
        fn = request.args.get("function") or None
        need("read", fn)
        listed = [t.to_dict() for t in store.triggers(fn)] + c.event_triggers.list(fn)
        return json_response({"triggers": [t for t in listed if guard.visible(t["function"])]})

    @app.post("/v1/triggers")
    def add_trigger():
        need("deploy")  # refused before the body is read: a token that may never do this learns nothing more
        data = _json_body()
        if data.get("kind", "http") != "http":
            fn = data.get("function")
            need("deploy", fn if isinstance(fn, str) else None)
            return json_response(c.event_triggers.add(data), 201)
        data.pop("kind", None)
        for f in ("function", "method", "path"):
            if not isinstance(data.get(f), str):
                raise ValidationError(f"{f} is required, for example "
                                      '{"function": "hello", "method": "GET", "path": "/hello/serverless"}', field=f)
        need("deploy", data["function"])
        t = store.add_trigger(data["function"], data["method"], data["path"], data.get("invocation"),
                              auth=data.get("auth"), cors=data.get("cors"))
        return json_response(t.to_dict(), 201)

    @app.post("/v1/functions/<name>/triggers")
    def add_function_trigger(name: str):
        need("deploy", name)   # NAME, or NAME:VERSION / NAME:ALIAS (the store checks the target)
        data = _json_body()
        method, path = data.get("method", "GET"), data.get("path")
        if not isinstance(method, str) or not isinstance(path, str):
            raise ValidationError('give the trigger as {"method": "GET", "path": "/hello"} (strings)',
                                  field="method" if not isinstance(method, str) else "path")
        base, qualifier = split_target(name)
        target = f"{ensure_name(base)}:{qualifier}" if qualifier else ensure_name(base)
        t = store.add_trigger(target, method, path, data.get("invocation"), auth=data.get("auth"),
                              cors=data.get("cors"))
        return json_response(t.to_dict(), 201)

    def _trigger_args(source) -> tuple[str, str]:
        method, path = source.get("method"), source.get("path")
        if not isinstance(method, str) or not method or not isinstance(path, str) or not path:
            raise ValidationError("name the trigger with method and path, for example method=GET&path=/hello",
                                  field="path")
        return method, path

    def _need_for_trigger(action: str, method: str, path: str) -> None:
        """The caller may ``action`` the function the trigger invokes (404 when there is none)."""
        need(action)
        need(action, store.trigger(method, path).function)

    @app.post("/v1/triggers/keys")
    def create_trigger_key():
        """A new bearer key or HMAC secret of a trigger; the only answer that ever contains it."""
        need("deploy")
        data = _json_body()
        method, path = _trigger_args(data)
        _need_for_trigger("deploy", method, path)
        record, value = store.create_trigger_key(method, path, data.get("name"))
        return json_response({**record, "key": value}, 201)

    @app.get("/v1/triggers/keys")
    def list_trigger_keys():
        need("read")
        method, path = _trigger_args(request.args)
        _need_for_trigger("read", method, path)
        return json_response({"keys": store.trigger_keys(method, path)})

    @app.delete("/v1/triggers/keys")
    def revoke_trigger_key():
        need("deploy")
        method, path = _trigger_args(request.args)
        _need_for_trigger("deploy", method, path)
        name = request.args.get("name") or ""
        return json_response({"revoked": store.revoke_trigger_key(method, path, name)})

    @app.patch("/v1/triggers/<trigger_id:trigger_id>")
    def update_trigger(trigger_id: str):
        """A schedule trigger's schedule, event, timezone or enabled."""
        need("deploy")  # before the lookup: whether an id exists is not for a token that may not change it
        need("deploy", c.event_triggers.get(trigger_id)[0]["function"])
        return json_response(c.event_triggers.update(trigger_id, _json_body()))

    @app.delete("/v1/triggers")
    def remove_trigger():
        need("deploy")
        if request.args.get("id"):
            need("deploy", c.event_triggers.get(request.args["id"])[0]["function"])
            return json_response({"deleted": c.event_triggers.remove(request.args["id"])})
        method, path = request.args.get("method", ""), request.args.get("path", "")
        if not method or not path:
            raise ValidationError("give the trigger as ?method=GET&path=/hello, or a schedule as ?id=ID", field="path")
        bound = store.find_trigger(method, path)
        if bound is not None:
            need("deploy", bound.function)
        t = store.remove_trigger(method, path)
        return json_response({"deleted": t.to_dict()})

    layers_view.register(app, store, need)
    versions_view.register(app, c, need, _json_body)

    @app.after_request
    def add_request_id(resp):
        resp.headers.setdefault("X-Request-Id", request_id())
        corr = correlation_id_of(request.environ)
        if corr:
            resp.headers.setdefault("X-Correlation-Id", corr)
        return resp

    return app


def _zip_files(files: dict) -> bytes:
    """Build a package from an online editor's {path: source} map."""
    import io
    import stat
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for path, source in sorted(files.items()):
            if not isinstance(path, str) or not isinstance(source, str):
                raise ValidationError("files must map file paths to source text", field="files")
            check_entry_name(path)
            info = zipfile.ZipInfo(path, date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = (stat.S_IFREG | 0o644) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, source.encode())
    return buf.getvalue()
