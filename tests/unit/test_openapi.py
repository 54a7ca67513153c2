"""The OpenAPI document and the control API's Flask routes describe the same API."""

import re

import pytest
from openapi_spec_validator import validate

from appliance.control import openapi

#: Routes that are not the API: the console's static pages, Flask's static files, and the
#: platform's own health alias (the edge's /_/ area, documented under /v1/health).
NOT_API = {"/", "/console/", "/console/{filename}", "/static/{filename}", "/_/health"}
IGNORED_METHODS = {"HEAD", "OPTIONS"}


def flask_routes(app) -> set[tuple[str, str]]:
    out = set()
    for rule in app.url_map.iter_rules():
        path = re.sub(r"<(?:[a-z_]+:)?([a-z_]+)>", r"{\1}", rule.rule)
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
    from appliance.wiring import build, ensure_admin_token

    data = tmp_path_factory.mktemp("openapi")
    settings = Settings.from_env({"APPLIANCE_DATA_DIR": str(data), "APPLIANCE_SANDBOX": "off"})
    c = build(settings)
    token_file = ensure_admin_token(c)  # as the first start does: the admin token, in the data directory
    app = create_control_app(c)
    app.test_client_class = authorized_client(token_file.read_text().strip())
    yield app
    c.close()


def authorized_client(token: str):
    """A test client that sends ``token`` as the bearer, as every client of the API must."""
    from flask.testing import FlaskClient

    class Client(FlaskClient):
        def open(self, *args, **kwargs):
            headers = kwargs.setdefault("headers", {})
            headers.setdefault("Authorization", f"Bearer {token}")
            return super().open(*args, **kwargs)
    return Client


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
            assert op["x-scope"] in ("read", "records", "invoke", "deploy", "admin", "none"), (path, method)
            assert {"401", "403", "421"} <= set(op["responses"]), (path, method)
            if method != "get":  # a change needs more than reading
                assert op["x-scope"] not in ("read", "records", "none"), (path, method)
            if "requestBody" in op:
                assert "415" in op["responses"], (path, method)
            if path.startswith("/v1/functions/{name}"):
                assert {"400", "404"} <= set(op["responses"]), (path, method)
            public = (path, method) == ("/v1/health", "get")
            assert (op["x-scope"] == "none") == public, (path, method)
            # Only health may be called without a token: an empty requirement makes the scheme optional.
            assert ({} in op.get("security", doc["security"])) == public, (path, method)


def test_token_scopes_follow_the_actions():
    assert openapi.token_scopes("records") == ["admin", "deploy", "invoke", "read"]
    assert openapi.token_scopes("read") == ["admin", "deploy", "read"]
    assert openapi.token_scopes("invoke") == ["admin", "deploy", "invoke"]
    assert openapi.token_scopes("admin") == ["admin"]


PATH_VALUES = {"name": "nobody", "queue": "q1", "trigger_id": "schedule-0", "version": "1", "alias": "live"}


def test_every_operation_checks_the_scope_the_document_states(control_app):
    """x-scope is what the view passes to need(...): a read token is refused (403 Auth.Forbidden)
    exactly the operations whose x-token-scopes leave out read, before anything is looked up."""
    made = control_app.test_client().post("/v1/tokens", json={"name": "reader", "scope": "read"})
    assert made.status_code == 201, made.get_json()
    reader = authorized_client(made.get_json()["token"])(control_app, control_app.response_class)
    checked = 0
    for template, ops in openapi.document()["paths"].items():
        path = template.format(**PATH_VALUES)
        for method, op in ops.items():
            resp = reader.open(path, method=method.upper(), query_string={"method": "GET", "path": "/x"},
                               json={} if "requestBody" in op else None)
            forbidden = resp.status_code == 403 and resp.get_json()["error"]["code"] == "Auth.Forbidden"
            assert forbidden == ("read" not in op["x-token-scopes"] and op["x-scope"] != "none"), \
                (method, template, op["x-scope"], resp.status_code, resp.get_data(as_text=True)[:300])
            checked += 1
    assert checked >= 38


def test_without_a_token_only_health_answers(control_app):
    anonymous = control_app.test_client()
    assert anonymous.get("/v1/health", headers={"Authorization": ""}).status_code == 401  # a bad header is refused
    from flask.testing import FlaskClient
    bare = FlaskClient(control_app, control_app.response_class)
    assert bare.get("/v1/health").status_code == 200
    resp = bare.get("/v1/functions")
    assert resp.status_code == 401
    assert resp.get_json()["error"]["code"] == "Auth.Required"
    assert "401" in openapi.document()["paths"]["/v1/functions"]["get"]["responses"]


def test_an_event_invocation_is_documented_as_202():
    responses = openapi.document()["paths"]["/v1/functions/{name}/invocations"]["post"]["responses"]
    assert {"200", "202", "429", "502", "503", "504"} <= set(responses)


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


def test_the_invocation_type_header_is_checked_even_when_the_query_decides():
    from appliance.control.invoke import invocation_type
    from appliance.core.errors import ValidationError

    assert invocation_type("Event", None) == "Event"
    assert invocation_type("RequestResponse", "aSync") == "Event"  # ?type= wins
    assert invocation_type(None, None) == "RequestResponse"
    with pytest.raises(ValidationError) as exc:
        invocation_type("HGY", "async")
    assert exc.value.field == "X-Amz-Invocation-Type"
