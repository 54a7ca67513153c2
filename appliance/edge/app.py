"""The edge router: HTTP triggers in, function results out.

``create_edge`` builds the edge router as Granian serves it: the trigger path of
:mod:`.trigger_path` (one path for every trigger request, cold or warm: match, build the event,
invoke, map the answer) in front of the edge's Flask app, which serves the platform paths under
``/_/`` (health, readiness, stats, this edge's concurrency and records).

Only health and readiness are public. The other platform paths show every function's load and
printed output, so they answer only the appliance's own parts (control planes, other edges),
which show the internal credential; function instances never hold it.
"""

from __future__ import annotations

import hmac

from flask import Flask, Response, request

from appliance.core.errors import ValidationError
from appliance.core.tokens import AuthRequired
from appliance.edge.trigger_path import EdgeApp
from appliance.web import install_error_handlers, json_response
from appliance.wiring import Components

#: The edge's platform paths anyone may call.
PUBLIC_PATHS = frozenset({"/_/health", "/_/ready"})


def create_edge(c: Components, *, threads: int) -> EdgeApp:
    """The edge router as Granian serves it: every trigger request on the event loop of
    :mod:`.trigger_path`, the platform paths on the Flask app below."""
    return EdgeApp(create_edge_app(c), c.store, c.invoker, c.settings.max_event_bytes, threads=threads,
                   client=c.event_loop_client(), account_id=c.settings.account_id,
                   async_runner=c.async_runner, body_timeout_s=c.settings.body_timeout_s)


def create_edge_app(c: Components) -> Flask:
    app = Flask("appliance.edge")
    app.config["MAX_CONTENT_LENGTH"] = c.settings.max_event_bytes
    install_error_handlers(app)
    credential = f"Bearer {c.internal_token}".encode()

    @app.before_request
    def internal_only():
        if request.path in PUBLIC_PATHS:
            return None
        given = request.headers.get("Authorization", "").encode("utf-8", "surrogateescape")
        if not c.internal_token or not hmac.compare_digest(given, credential):
            raise AuthRequired("this platform path answers only the appliance's own control planes and edges")
        return None

    @app.after_request
    def challenge(resp):
        if resp.status_code == 401:
            resp.headers["WWW-Authenticate"] = 'Bearer realm="faas-internal"'
        return resp

    @app.get("/_/health")
    def health():
        body = {"status": "ok", "role": "edge", "mode": c.settings.mode}
        registry_status = getattr(c.registry, "status", None)  # cluster mode: is Consul answering?
        if registry_status is not None:
            body["registry"] = registry_status()
            if body["registry"].get("consul") != "ok":
                body["status"] = "degraded"
        return json_response(body)

    @app.get("/_/metrics")
    def metrics():
        """This edge's Prometheus metrics (appliance/backends/prometheus_metrics.py), under the platform's /_/ area."""
        body, ctype = c.metrics.render()
        return Response(body, content_type=ctype)

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
        to sum (see appliance/core/cluster_load.py)."""
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
                                   request_id=a.get("request_id") or None,
                                   before_seq=int(a["before"]) if a.get("before") else None,
                                   max_bytes=min(int(a.get("max_bytes") or c.settings.max_answer_bytes),
                                                 c.settings.max_answer_bytes))
        except ValueError:
            raise ValidationError("since, before, limit, max_bytes and after must be numbers", field="query") from None
        return json_response({"invocations": rows})

    @app.get("/_/usage")
    def usage():
        a = request.args
        return json_response({"usage": c.records.usage(a.get("function") or None,
                                                       since=float(a["since"]) if a.get("since") else None)})

    @app.get("/_/series")
    def series():
        """This edge's chart buckets of one function, for the control plane to merge."""
        a = request.args
        try:
            since, step = float(a.get("since") or "x"), float(a.get("step") or "x")
        except ValueError:
            raise ValidationError("since and step must be numbers", field="query") from None
        if not step > 0:
            raise ValidationError("step must be positive", field="step")
        return json_response({"buckets": c.records.series(a.get("function") or "", since, step)})

    return app
