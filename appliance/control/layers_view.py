"""The control API's layer endpoints (README "Layers"): publish, list, delete layer versions.

Kept apart from :mod:`.api` so the layer routes are one block: ``register(app, store)`` adds them to
the API's Flask app. Packages are zips sent as the body; each publish is a new immutable version.
"""

from __future__ import annotations

from flask import Flask, request

from appliance.control.auth import require_content_type
from appliance.core.errors import NotFound, ValidationError
from appliance.core.layers import LayerStore
from appliance.core.model import validate_name
from appliance.web import json_response


def register(app: Flask, store, need) -> LayerStore:
    """Add the /v1/layers routes; ``store`` is the FunctionStore (its metadata, blobs and limits),
    ``need(action)`` the control API's scope check (layers belong to no one function: reading them
    needs ``read``, publishing and deleting ``deploy``)."""
    layers = LayerStore(store.meta, store.blobs, store.limits)

    @app.get("/v1/layers")
    def list_layers():
        need("read")
        return json_response({"layers": [v.to_api() | {"used_by": layers.users(v.ref)} for v in layers.all()]})

    @app.get("/v1/layers/<name>")
    def layer_versions(name: str):
        need("read")
        versions = layers.versions(validate_name(name))
        if not versions:
            raise NotFound(f"layer {name!r} has no versions")
        return json_response({"versions": [v.to_api() | {"used_by": layers.users(v.ref)} for v in versions]})

    @app.route("/v1/layers/<name>", methods=["POST", "PUT"])
    def publish_layer(name: str):
        need("deploy")
        require_content_type("application/zip", "application/octet-stream", "application/x-zip-compressed",
                             "multipart/form-data")
        upload = request.files.get("layer") or request.files.get("code") if request.mimetype == "multipart/form-data" \
            else None
        data = upload.read() if upload is not None else request.get_data(cache=False)
        if data[:4] != b"PK\x03\x04":
            raise ValidationError("a layer is a zip package sent as the body (application/zip)", field="layer")
        layer = layers.publish(validate_name(name), data, request.args.get("description") or "")
        return json_response(layer.to_api(), 201)

    @app.delete("/v1/layers/<name>/versions/<int:version>")
    def delete_layer(name: str, version: int):
        need("deploy")
        return json_response({"deleted": layers.delete(f"{validate_name(name)}:{version}").to_api()})

    return layers
