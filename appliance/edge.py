"""The edge router: HTTP triggers in, function results out.

``create_edge_app`` builds a Flask app whose catch-all route matches the trigger table, builds the
AWS HTTP API 2.0 event, invokes through the core and maps the result by the Lambda proxy rules.
Platform paths live under ``/_/`` (health, readiness, stats); everything else is a trigger.
"""

from __future__ import annotations

import json

from flask import Flask, Response, request

from .errors import ApplianceError, PayloadTooLarge, ValidationError, to_response_body
from .events import build_event, to_http_response
from .http_common import error_response, install_error_handlers, json_response, request_id
from .invoker import encode_event
from .wiring import Components

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-authorization",
              "proxy-authenticate", "content-length"}


def create_edge_app(c: Components) -> Flask:
    app = Flask("appliance.edge")
    app.config["MAX_CONTENT_LENGTH"] = c.settings.max_event_bytes
    install_error_handlers(app)
    methods = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]

    @app.get("/_/health")
    def health():
        body = {"status": "ok", "role": "edge", "mode": c.settings.mode}
        registry_status = getattr(c.registry, "status", None)  # cluster mode: is Consul answering?
        if registry_status is not None:
            body["registry"] = registry_status()
            if body["registry"].get("consul") != "ok":
                body["status"] = "degraded"
        return json_response(body)

    @app.get("/_/ready")
    def ready():
        return json_response({"status": "ready"})

    @app.get("/_/stats")
    def stats():
        out = {}
        for pool in c.activator.pools():
            with pool.lock:
                out[pool.name] = {"inflight": sum(s.inflight for s in pool.slots.values()),
                                  "instances": len(pool.slots), "starting": pool.starting,
                                  "waiting": len(pool.waiters)}
        return json_response({"functions": out})

    @app.get("/_/concurrency")
    def concurrency():
        """This edge's in-flight samples per function, in wall-clock seconds, for the elected edge
        to sum (see appliance/cluster_load.py)."""
        return json_response(c.scaler.report().to_json())

    @app.get("/_/scaling/<name>")
    def scaling(name: str):
        """This edge's latest decision for a function: the cluster's when this edge leads."""
        record = c.scaler.decision(name)
        return json_response({"scaling": record.to_dict() if record else None, "edge": c.scaler.edge_id,
                              "leader": c.scaler.leadership.is_leader()})

    @app.get("/_/invocations")
    def records():
        """This edge's invocation records, for the control plane to merge (see records_view)."""
        a = request.args
        after = a.get("after")
        try:
            rows = c.records.query(a.get("function") or None, since=float(a["since"]) if a.get("since") else None,
                                   status=a.get("status") or None, limit=int(a.get("limit") or 100),
                                   after_seq=int(after) if after not in (None, "") else None,
                                   request_id=a.get("request_id") or None)
        except ValueError:
            raise ValidationError("since, limit and after must be numbers", field="query") from None
        return json_response({"invocations": rows})

    @app.get("/_/usage")
    def usage():
        a = request.args
        return json_response({"usage": c.records.usage(a.get("function") or None,
                                                       since=float(a["since"]) if a.get("since") else None)})

    @app.route("/", defaults={"path": ""}, methods=methods)
    @app.route("/<path:path>", methods=methods)
    def trigger(path: str):
        req = request._get_current_object()  # one proxy lookup instead of one per attribute
        rid = request_id()
        raw_path = req.path
        method = req.method
        match = c.store.routes().match(method, raw_path)
        body = req.get_data(cache=False)
        if len(body) > c.settings.max_event_bytes:
            raise PayloadTooLarge(f"the request body is {len(body)} bytes; the limit is {c.settings.max_event_bytes}")
        event = build_event(
            method=method, raw_path=raw_path,
            raw_query=req.query_string.decode("latin-1"), headers=list(req.headers.items()), body=body,
            route_key=match.route_key, path_params=match.params, request_id=rid,
            source_ip=req.remote_addr or "", domain=req.host.split(":")[0])
        outcome = c.invoker.invoke(match.trigger.function, encode_event(event), request_id=rid,
                                   trigger=match.route_key)
        if outcome.error is not None:
            resp = error_response(outcome.error)
            resp.headers["Server-Timing"] = outcome.server_timing()
            return resp
        try:
            mapped = to_http_response(outcome.result)
        except ApplianceError as exc:
            resp = error_response(exc)
            resp.headers["Server-Timing"] = outcome.server_timing()
            return resp
        headers = [("X-Request-Id", rid), ("Server-Timing", outcome.server_timing())]
        content_type = None
        for k, v in mapped.headers:
            lk = k.lower()
            if lk == "content-type":
                content_type = v
            elif lk not in HOP_BY_HOP:
                headers.append((k, v))
        return Response(mapped.body if method != "HEAD" else b"", status=mapped.status, headers=headers,
                        content_type=content_type)

    return app


def invoke_response(c: Components, function: str, body: bytes) -> Response:
    """Direct invoke (control API): the result as JSON, or the structured error."""
    rid = request_id()
    if body.strip():
        try:
            json.loads(body)
        except ValueError as exc:
            from .errors import ValidationError
            raise ValidationError(f"the request body must be the event as JSON: {exc}", field="body") from None
    else:
        body = b"{}"
    outcome = c.invoker.invoke(function, body, request_id=rid, trigger=None)
    headers = {"X-Request-Id": rid, "Server-Timing": outcome.server_timing(),
               "X-Faas-Cold-Start": "1" if outcome.record.cold else "0"}
    if outcome.error is not None:
        status, extra, payload = to_response_body(outcome.error, rid)
        headers.update(extra)
        return json_response(payload, status, headers)
    return json_response(outcome.result, 200, headers)
