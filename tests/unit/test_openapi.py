"""The OpenAPI document and the control API's Flask routes describe the same API."""

import re

import pytest
from flask.testing import FlaskClient
from openapi_spec_validator import validate

from appliance.control import openapi

#: Routes that are not the API: the console's static pages, Flask's static files, and the
#: platform's own health alias (the edge's /_/ area, documented under /v1/health).
NOT_API = {"/", "/console/", "/console/{filename}", "/static/{filename}", "/_/health"}
IGNORED_METHODS = {"HEAD", "OPTIONS"}


def flask_routes(app) -> set[tuple[str, str]]:
    out = set()
    for rule in app.url_map.iter_rules():
        path = re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", r"{\1}", rule.rule)
        if path in NOT_API:
            continue
        for method in rule.methods - IGNORED_METHODS:
            out.add((path, method))
    return out


def document_routes(doc) -> set[tuple[str, str]]:
    return {(path, method.upper()) for path, ops in doc["paths"].items() for method in ops}


@pytest.fixture(scope="module")
def control_app(tmp_path_factory):
    from appliance.config import Settings
    from appliance.control.api import create_control_app
    from appliance.wiring import build

    data = tmp_path_factory.mktemp("openapi")
    settings = Settings.from_env({"APPLIANCE_DATA_DIR": str(data), "APPLIANCE_SANDBOX": "off"})
    c = build(settings)
    _, secret = c.tokens.create("openapi-test", "admin", created_by="test")
    app = create_control_app(c)
    app.test_client_class = _TokenClient
    _TokenClient.token = secret
    yield app
    c.close()


class _TokenClient(FlaskClient):
    """A test client that sends an admin token, as every /v1/ call but the health check needs one."""

    token = ""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {self.token}"


def test_the_document_is_valid_openapi_3_1():
    doc = openapi.document("http://127.0.0.1:8081")
    assert doc["openapi"] == "3.1.0"
    validate(doc)


def test_every_route_is_documented_and_every_documented_route_exists(control_app):
    routes = flask_routes(control_app)
    documented = document_routes(openapi.document())
    assert routes - documented == set(), "routes missing from appliance/control/openapi.py"
    assert documented - routes == set(), "documented paths the API does not serve"


def test_the_comparison_sees_a_missing_route(control_app):
    doc = openapi.document()
    del doc["paths"]["/v1/usage"]
    assert ("/v1/usage", "GET") in flask_routes(control_app) - document_routes(doc)


def test_every_operation_declares_bearer_auth_errors_and_a_scope():
    doc = openapi.document()
    assert doc["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http", "scheme": "bearer", "description": "an API token: Authorization: Bearer <token>"}
    assert doc["security"] == [{"bearerAuth": []}]
    # A server that enforces no tokens yet still declares them, as optional.
    assert openapi.document(auth_required=False)["security"] == [{"bearerAuth": []}, {}]
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            assert op["x-scope"] in ("read", "write"), (path, method)
            assert {"401", "403"} <= set(op["responses"]), (path, method)
            assert (op["x-scope"] == "read") == (method == "get"), (path, method)
            if "{name}" in path:
                assert {"400", "404"} <= set(op["responses"]), (path, method)


def test_the_control_api_serves_the_document(control_app):
    resp = control_app.test_client().get("/v1/openapi.json")
    assert resp.status_code == 200
    body = resp.get_json()
    assert body["servers"] == [{"url": "http://localhost"}]
    assert {"bearerAuth": []} in body["security"]
    assert body["paths"].keys() == openapi.document()["paths"].keys()


def test_an_undeclared_method_is_405_with_allow(control_app):
    resp = control_app.test_client().open("/v1/functions", method="TRACE")
    assert resp.status_code == 405
    assert set(resp.headers["Allow"].split(", ")) >= {"GET", "POST"}
    assert resp.get_json()["error"]["code"] == "Route.MethodNotAllowed"


def test_a_trigger_with_a_non_string_method_is_a_400(control_app):
    client = control_app.test_client()
    assert client.post("/v1/functions", json={"name": "typed"}).status_code == 201
    resp = client.post("/v1/functions/typed/triggers", json={"method": [None], "path": "/"})
    assert resp.status_code == 400
    assert resp.get_json()["error"]["field"] == "method"


def test_integral_numbers_are_integers(control_app):
    """JSON has one number type and JSON Schema counts 256.0 as an integer: so does the API."""
    resp = control_app.test_client().post("/v1/functions", json={"name": "floaty", "memory_mb": 256.0})
    assert resp.status_code == 201
    assert resp.get_json()["memory_mb"] == 256
    bad = control_app.test_client().post("/v1/functions", json={"name": "floaty2", "memory_mb": 256.5})
    assert bad.status_code == 400
