"""The control API's published-version and alias endpoints (README "Versions and aliases").

Kept apart from :mod:`.api` so these routes are one block: ``register(app, c, need, json_body)`` adds
them. Publishing and alias changes need the ``deploy`` scope on the function, reads ``read``.

Moving an alias pre-warms like a deploy: when the version it will route to keeps min_instances,
those instances are started and awaited (bounded by the start timeout) before the alias moves, so
the first requests after the move find them warm; the old version's instances then go by keep-alive.
"""

from __future__ import annotations

import logging
import time

from flask import Flask, request

from appliance.core import routing
from appliance.core.function_store import ensure_name
from appliance.core.model import InstanceSpec, pool_key
from appliance.core.versions import validate_description
from appliance.web import json_response

log = logging.getLogger("appliance.control.audit")


def register(app: Flask, c, need, json_body) -> None:
    store = c.store
    versions = store.published

    def _optional_body():
        raw = request.get_data(cache=True)
        return json_body() if raw.strip() else None

    def _prewarm(name: str, alias: routing.Alias) -> list[str]:
        """Start and await min_instances of the versions ``alias`` will route to that no alias routes to yet."""
        if not getattr(c.scheduler, "supports_published", False):
            return []
        base = store.get(name, fresh=True)
        already = base.routing.routed()
        warnings = []
        for number in alias.versions():
            if number in already:
                continue
            record = versions.get(name, number).record(base, keep_min=True)
            want = min(record.config.min_instances, record.config.max_instances)
            spec = InstanceSpec.of(record, reserved=True, published=number)
            prepare = getattr(c.scheduler, "prepare", None)
            if prepare:
                prepare(spec)
            if not want:
                continue
            c.activator.ensure_min(spec, min_instances=want, max_instances=record.config.max_instances)
            ready = c.activator.pool(pool_key(name, number)).wait_ready(record.version, want,
                                                                         c.settings.start_timeout_s)
            if ready < want:
                warnings.append(f"only {ready} of {want} min_instances of version {number} were ready before the "
                                "alias moved; see the function's logs")
        return warnings

    @app.post("/v1/functions/<name>/publish")
    def publish_version(name: str):
        need("deploy", name)
        name = ensure_name(name)
        description = validate_description(_optional_body())
        pv, made = versions.publish(name, description)
        if made:
            log.info("event=version_published function=%s version=%d code_version=%d", name, pv.version,
                     pv.code_version)
        return json_response(pv.to_api(), 201 if made else 200,
                             {"Location": f"/v1/functions/{name}/published/{pv.version}"})

    @app.get("/v1/functions/<name>/published")
    def list_published(name: str):
        need("read", name)
        return json_response({"versions": [pv.to_api() for pv in versions.list(ensure_name(name))]})

    @app.get("/v1/functions/<name>/published/<int:version>")
    def get_published(name: str, version: int):
        need("read", name)
        name = ensure_name(name)
        record = store.get(name, fresh=True)
        routing.executed(str(version), record.routing, 0.0)  # Version.NotFound unless it is listed
        return json_response(versions.get(name, version).to_api())

    @app.delete("/v1/functions/<name>/published/<int:version>")
    def delete_published(name: str, version: int):
        need("deploy", name)
        pv = versions.delete(ensure_name(name), version)
        log.info("event=version_deleted function=%s version=%d", name, version)
        return json_response({"deleted": pv.to_api()})

    @app.get("/v1/functions/<name>/aliases")
    def list_aliases(name: str):
        need("read", name)
        name = ensure_name(name)
        return json_response({"aliases": [a.to_api(name) for a in versions.aliases(name)]})

    @app.get("/v1/functions/<name>/aliases/<alias>")
    def get_alias(name: str, alias: str):
        need("read", name)
        name = ensure_name(name)
        return json_response(versions.alias(name, routing.validate_alias_name(alias)).to_api(name))

    @app.put("/v1/functions/<name>/aliases/<alias>")
    def set_alias(name: str, alias: str):
        need("deploy", name)
        name = ensure_name(name)
        wanted = routing.validate_alias(alias, json_body(), now=time.time())
        versions.check_alias(name, wanted)
        warnings = _prewarm(name, wanted)
        moved = versions.set_alias(name, wanted)
        log.info("event=alias_set function=%s alias=%s version=%d weights=%s", name, moved.name, moved.version,
                 moved.to_doc()["weights"])
        out = moved.to_api(name)
        if warnings:
            out["warnings"] = warnings
        return json_response(out)

    @app.delete("/v1/functions/<name>/aliases/<alias>")
    def delete_alias(name: str, alias: str):
        need("deploy", name)
        name = ensure_name(name)
        gone = versions.delete_alias(name, routing.validate_alias_name(alias))
        log.info("event=alias_deleted function=%s alias=%s", name, gone.name)
        return json_response({"deleted": gone.to_api(name)})
