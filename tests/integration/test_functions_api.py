"""The /v1/functions REST API: CRUD, validation, not found, conflicts."""

import pytest


def call(r, method, path, **kw):
    return r.http.request(method, r.api_url + path, timeout=10, **kw)


def test_create_get_list_update_delete(appliance):
    created = call(appliance, "POST", "/v1/functions", json={
        "name": "crud", "memory_mb": 256, "timeout_s": 5, "concurrency": 2, "max_instances": 3,
        "environment": {"GREETING": "hi"}, "description": "a test"})
    assert created.status_code == 201, created.text
    assert created.headers["Location"] == "/v1/functions/crud"
    body = created.json()
    assert (body["memory_mb"], body["timeout_s"], body["concurrency"], body["version"]) == (256, 5, 2, 0)
    got = call(appliance, "GET", "/v1/functions/crud").json()
    assert got["environment"] == {"GREETING": "hi"} and got["triggers"] == [] and got["instances"] == []
    assert "crud" in [f["name"] for f in call(appliance, "GET", "/v1/functions").json()["functions"]]
    updated = call(appliance, "PATCH", "/v1/functions/crud", json={"memory_mb": 512})
    assert updated.status_code == 200 and updated.json()["memory_mb"] == 512
    assert updated.json()["timeout_s"] == 5
    assert call(appliance, "DELETE", "/v1/functions/crud").status_code == 200
    assert call(appliance, "GET", "/v1/functions/crud").status_code == 404


@pytest.mark.parametrize("body, field", [
    ({"name": "Bad_Name"}, "name"),
    ({"name": "ok", "memory_mb": 64}, "memory_mb"),
    ({"name": "ok", "timeout_s": 1000}, "timeout_s"),
    ({"name": "ok", "runtime": "cobol"}, "runtime"),
    ({"name": "ok", "handler": "nodot"}, "handler"),
    ({"name": "ok", "environment": {"A": 1}}, "environment"),
    ({"name": "ok", "unknown": 1}, "unknown"),
])
def test_invalid_fields_get_400_naming_the_field(appliance, body, field):
    resp = call(appliance, "POST", "/v1/functions", json=body)
    assert resp.status_code == 400
    err = resp.json()["error"]
    assert err["code"] == "Request.Invalid" and err["field"] == field and err["message"]


def test_a_body_that_is_not_json_is_a_400(appliance):
    resp = call(appliance, "POST", "/v1/functions", data="{nope", headers={"Content-Type": "application/json"})
    assert resp.status_code == 400 and resp.json()["error"]["field"] == "body"


def test_unknown_functions_are_404_and_name_clashes_409(appliance):
    resp = call(appliance, "GET", "/v1/functions/nope")
    assert resp.status_code == 404 and resp.json()["error"]["code"] == "Function.NotFound"
    assert call(appliance, "PATCH", "/v1/functions/nope", json={"memory_mb": 256}).status_code == 404
    assert call(appliance, "DELETE", "/v1/functions/nope").status_code == 404
    assert call(appliance, "POST", "/v1/functions/nope/invocations", json={}).status_code == 404
    assert call(appliance, "POST", "/v1/functions", json={"name": "clash"}).status_code == 201
    resp = call(appliance, "POST", "/v1/functions", json={"name": "clash"})
    assert resp.status_code == 409 and resp.json()["error"]["field"] == "name"


def test_invoking_a_function_without_code_says_how_to_upload(appliance):
    call(appliance, "POST", "/v1/functions", json={"name": "nocode"})
    resp = call(appliance, "POST", "/v1/functions/nocode/invocations", json={})
    assert resp.status_code == 409 and resp.json()["error"]["code"] == "Function.NoCode"
    assert "upload" in resp.json()["error"]["message"]


def test_unknown_api_paths_answer_json(appliance):
    resp = call(appliance, "GET", "/v1/nothing-here")
    assert resp.status_code == 404 and resp.json()["error"]["code"] == "Route.NotFound"
