"""The control-plane REST API under ``/v1``: functions, code, triggers, invocations, logs, usage.

Handlers are thin: parse, call the FunctionStore / Invoker / RecordStore, shape JSON. Every error
is an ApplianceError rendered by ``http_common.error_response``.
"""

from __future__ import annotations

import io
import json
import time
import zipfile
from pathlib import Path

from flask import Flask, Response, redirect, request, send_from_directory

from appliance.control.invoke import invoke_response, read_event
from appliance.control.peercred import from_instance
from appliance.control.records_view import decode_cursor, encode_cursor, next_page
from appliance.core.codepkg import check_entry_name
from appliance.core.errors import NotFound, Unauthorized, ValidationError
from appliance.core.function_store import ensure_name
from appliance.core.model import FunctionConfig, InstanceSpec
from appliance.web import correlation_id_of, install_error_handlers, json_response, request_id
from appliance.wiring import Components


class InstanceForbidden(Unauthorized):
    code = "Auth.Forbidden"
    status = 403


ZIP_TYPES = ("application/zip", "application/x-zip-compressed", "application/octet-stream")
CONSOLE_DIR = Path(__file__).resolve().parent / "console"
#: Files the online editor shows: text, at most this size each.
EDITABLE_MAX_BYTES = 256 << 10
#: Deepest nesting of a JSON body the API reads.
MAX_JSON_DEPTH = 64


def _json_body() -> dict:
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


def create_control_app(c: Components) -> Flask:
    app = Flask("appliance.control")
    app.config["MAX_CONTENT_LENGTH"] = c.settings.max_code_bytes + (1 << 20)
    install_error_handlers(app)
    store = c.store

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
            collect({r.digest for r in store.list() if r.digest})

    def _wait_ready(name: str, version: int, want: int, timeout_s: float) -> int:
        """Ready instances of ``version``, once ``want`` are or no start is under way (or at the timeout)."""
        pool = c.activator.pool(name)
        end = time.monotonic() + timeout_s
        while True:
            with pool.lock:
                ready = sum(1 for s in pool.slots.values() if s.instance.version == version and not s.draining)
                starting = pool.starting
            if ready >= want or not starting or time.monotonic() > end:
                return ready
            time.sleep(0.005)  # a deploy, not a request: a short poll of the pool is cheap enough

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
        ready = _wait_ready(pending.name, pending.version, want, c.settings.start_timeout_s)
        if ready < want:
            return (f"only {ready} of {want} min_instances of version {pending.version} were ready before it "
                    "started taking traffic; see the function's logs")
        return None

    @app.before_request
    def refuse_function_instances():
        """Functions with network access share the host's loopback; they must not drive the platform."""
        if c.settings.sandbox != "off" and from_instance(request.environ, c.instance_uids):
            raise InstanceForbidden("the control API does not answer function instances")

    @app.get("/v1/health")
    @app.get("/_/health")
    def health():
        return json_response({"status": "ok", "role": "control", "mode": c.settings.mode, "notes": c.notes,
                              "edge_port": c.ports.get("edge"), "seccomp": c.seccomp})

    # -- web console (static; it uses the API below) -----------------------------------

    @app.get("/")
    def root():
        return redirect("/console/", code=302)

    @app.get("/console/")
    @app.get("/console/<path:filename>")
    def console(filename: str = "index.html"):
        return send_from_directory(CONSOLE_DIR, filename, max_age=0)

    # -- functions -----------------------------------------------------------------------

    @app.get("/v1/functions")
    def list_functions():
        return json_response({"functions": [r.to_api() for r in store.list()]})

    @app.post("/v1/functions")
    def create_function():
        data = _json_body()
        config = FunctionConfig.from_request(data)
        record = store.create(config)
        return json_response(record.to_api(), 201, {"Location": f"/v1/functions/{record.name}"})

    @app.get("/v1/functions/<name>")
    def get_function(name: str):
        record = store.get(ensure_name(name), fresh=True)
        out = record.to_api()
        out["triggers"] = [t.to_dict() for t in store.triggers(function=name)]
        out["instances"] = [i.to_api() for i in c.scheduler.instances(name)]
        pool = c.activator.pool(name)
        with pool.lock:  # what this process sees; the decision below is the deciding edge's
            here = {"ready": len(pool.slots), "starting": pool.starting, "waiting": len(pool.waiters),
                    "inflight": sum(s.inflight for s in pool.slots.values()), "current": pool._live_count()}
        decision = c.scaling_view.get(name)
        if decision.get("current") is None:
            decision.pop("current")
        out["scaling"] = {**here, **decision}
        return json_response(out)

    @app.route("/v1/functions/<name>", methods=["PUT", "PATCH"])
    def update_function(name: str):
        record = store.update(ensure_name(name), _json_body())
        if record.version:
            _after_code_change(name)
        return json_response(record.to_api())

    @app.delete("/v1/functions/<name>")
    def delete_function(name: str):
        record = store.delete(ensure_name(name))
        c.scaler.remove_function(name)
        _collect_code()
        return json_response({"deleted": record.name})

    # -- code ----------------------------------------------------------------------------

    @app.route("/v1/functions/<name>/code", methods=["PUT", "POST"])
    def upload_code(name: str):
        name = ensure_name(name)
        filename = request.args.get("filename")
        ctype = (request.mimetype or "").lower()
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
        store.get(ensure_name(name))
        return json_response({"versions": [v.to_dict() for v in store.versions(name)]})

    # -- invocations -----------------------------------------------------------------------

    @app.post("/v1/functions/<name>/invocations")
    def invoke(name: str):
        return invoke_response(c, ensure_name(name), read_event(c.settings.max_event_bytes))

    @app.get("/v1/functions/<name>/invocations")
    def invocations(name: str):
        store.get(ensure_name(name))
        c.records_view.flush(2.0)
        limit = _int_arg("limit", 50)
        rows = c.records_view.query(name, since=_since(), status=request.args.get("status") or None,
                                    limit=limit, request_id=request.args.get("request_id") or None,
                                    before=decode_cursor(request.args.get("before"), "before"),
                                    max_bytes=c.settings.max_answer_bytes)
        # Answers are bounded in rows and in bytes; older ones: ?before=<next>, until an empty page.
        nxt = encode_cursor(next_page(rows, decode_cursor(request.args.get("before"), "before"))) if rows else None
        return json_response({"invocations": rows, "next": nxt})

    @app.get("/v1/functions/<name>/logs")
    def logs(name: str):
        store.get(ensure_name(name))
        c.records_view.flush(2.0)
        cursor = decode_cursor(request.args.get("after"))
        rows = c.records_view.query(name, since=_since(), status=request.args.get("status") or None,
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
        store.get(ensure_name(name))
        return json_response({"instances": [i.to_api() for i in c.scheduler.instances(name)]})

    @app.get("/v1/usage")
    def usage():
        c.records_view.flush(2.0)
        return json_response({"usage": c.records_view.usage(request.args.get("function") or None, since=_since())})

    # -- triggers ----------------------------------------------------------------------------

    @app.get("/v1/triggers")
    def list_triggers():
        return json_response({"triggers": [t.to_dict() for t in store.triggers(request.args.get("function") or None)]})

    @app.post("/v1/triggers")
    def add_trigger():
        data = _json_body()
        for f in ("function", "method", "path"):
            if not isinstance(data.get(f), str):
                raise ValidationError(f"{f} is required, for example "
                                      '{"function": "hello", "method": "GET", "path": "/hello/serverless"}', field=f)
        t = store.add_trigger(data["function"], data["method"], data["path"])
        return json_response(t.to_dict(), 201)

    @app.post("/v1/functions/<name>/triggers")
    def add_function_trigger(name: str):
        data = _json_body()
        t = store.add_trigger(ensure_name(name), data.get("method", "GET"), data.get("path"))
        return json_response(t.to_dict(), 201)

    @app.delete("/v1/triggers")
    def remove_trigger():
        method, path = request.args.get("method", ""), request.args.get("path", "")
        if not method or not path:
            raise ValidationError("give the trigger as ?method=GET&path=/hello", field="path")
        t = store.remove_trigger(method, path)
        return json_response({"deleted": t.to_dict()})

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
