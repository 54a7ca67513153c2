"""The edge router: HTTP triggers in, function results out.

``create_edge_app`` builds the edge router's Flask app: the trigger view (match the trigger table,
build the AWS HTTP API 2.0 event, invoke through the core, which starts an instance when none is
ready, and map the result by the Lambda proxy rules) and the platform paths under ``/_/``
(health, readiness, stats, this edge's concurrency and records). ``create_edge`` puts the event
loop of :mod:`.trigger_path` in front of it: requests a ready instance can take are served
there, without Flask's per-request machinery; cold starts and platform paths reach Flask.
"""

from __future__ import annotations

import json

from flask import Flask, Response, request

from .errors import ValidationError, to_response_body
from .http_common import install_error_handlers, json_response, request_id
from .trigger_path import METHODS, EdgeApp, host_name, trigger_answer, trigger_event
from .wiring import Components


def create_edge(c: Components, *, threads: int) -> EdgeApp:
    """The edge router as Granian serves it: the Flask app below, with warm trigger requests
    taken on an event loop in front of it (see trigger_path)."""
    return EdgeApp(create_edge_app(c), c.store, c.activator, c.invoker, c.settings.max_event_bytes, threads=threads)


def create_edge_app(c: Components) -> Flask:
    app = Flask("appliance.edge")
    app.config["MAX_CONTENT_LENGTH"] = c.settings.max_event_bytes
    install_error_handlers(app)

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

    @app.route("/", defaults={"path": ""}, methods=sorted(METHODS))
    @app.route("/<path:path>", methods=sorted(METHODS))
    def trigger(path: str):
        """A trigger request: match, build the event, invoke (starting an instance when none is
        ready, the cold start), map the result. Under Granian the event loop in front serves
        the requests a ready instance can take and hands the cold ones here."""
        rid = request_id()
        match = c.store.routes().match(request.method, request.path)
        body = request.get_data(cache=False)
        event = trigger_event(method=request.method, path=request.path,
                              query=request.environ.get("QUERY_STRING", ""),
                              headers=[(k.lower(), v) for k, v in request.headers.items()], body=body, match=match,
                              request_id=rid, source_ip=request.remote_addr or "", domain=host_name(request.host))
        outcome = c.invoker.invoke(match.trigger.function, event, request_id=rid, trigger=match.route_key)
        status, headers, data = trigger_answer(request.method, rid, outcome)
        return Response(data, status=status, headers=headers)

    return app


def invoke_response(c: Components, function: str, body: bytes) -> Response:
    """Direct invoke (control API): the result as JSON, or the structured error."""
    rid = request_id()
    if body.strip():
        try:
            json.loads(body)
        except ValueError as exc:
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
