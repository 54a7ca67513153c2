"""Published versions and aliases end to end: publish, alias with weights, qualified invocations and
triggers, records, in-use and validation errors, the CLI, tokens and the pre-warm of an alias move."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import requests

from .conftest import REPO, make_zip, wait_for

CODE = ("import os\n"
        "def handler(event, context):\n"
        "    return {'code': %r, 'colour': os.environ.get('COLOUR'), 'memory': context.memory_limit_in_mb,\n"
        "            'version': context.function_version, 'env_version': os.environ['AWS_LAMBDA_FUNCTION_VERSION']}\n")


def faas(r, *args, check=True):
    """The CLI as a user runs it, with the token in FAAS_TOKEN."""
    env = {**os.environ, "FAAS_TOKEN": r.token, "FAAS_API": r.api_url}
    proc = subprocess.run([sys.executable, "-m", "appliance", *args], cwd=str(REPO), capture_output=True, text=True,
                          timeout=60, env=env)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def test_publish_alias_weights_qualified_targets_records_and_errors(appliance):
    r = appliance
    api = f"{r.api_url}/v1/functions"
    name = r.deploy({"index.py": CODE % "one"}, name="ver-app", environment={"COLOUR": "blue"}, concurrency=8,
                    memory_mb=128)
    # v1: code "one", blue, 128 MB (the CLI, with FAAS_TOKEN)
    v1 = json.loads(faas(r, "publish", name, "--description", "first", "-o", "json").stdout)
    assert (v1["version"], v1["code_version"], v1["description"], v1["config"]["environment"]) == \
        (1, 1, "first", {"COLOUR": "blue"})
    # Nothing changed: the same version again, with 200.
    again = r.http.post(f"{api}/{name}/publish", json={}, timeout=10)
    assert again.status_code == 200 and again.json()["version"] == 1
    # v2: code "two", green, 256 MB
    r.api.upload_code(name, make_zip({"index.py": CODE % "two"}))
    r.api.update_function(name, environment={"COLOUR": "green"}, memory_mb=256)
    made = r.http.post(f"{api}/{name}/publish", json={"description": "second"}, timeout=10)
    assert made.status_code == 201 and made.json()["version"] == 2 and made.json()["code_version"] == 2
    # $LATEST moves on: red, not published
    r.api.update_function(name, environment={"COLOUR": "red"})
    listed = json.loads(faas(r, "published", name, "-o", "json").stdout)
    assert [v["version"] for v in listed] == [2, 1]
    assert "second" in faas(r, "published", name).stdout

    # Each target runs its own code and settings, and says which version ran.
    for target, params, want in ((f"{name}:1", None, ("1", "one", "blue", 128)),
                                 (name, {"qualifier": "2"}, ("2", "two", "green", 256)),
                                 (name, None, ("$LATEST", "two", "red", 256))):
        resp = r.http.post(f"{api}/{target}/invocations", json={}, params=params, timeout=30)
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert (resp.headers["X-Amz-Executed-Version"], body["code"], body["colour"], body["memory"]) == want
        if want[0] != "$LATEST":  # an instance of a published version knows its number, as on Lambda
            assert body["version"] == body["env_version"] == want[0]
    # The three versions run side by side, in pools of their own.
    executed = {i["executed_version"] for i in r.instances(name)}
    assert executed == {"$LATEST", "1", "2"}

    # The alias, through an HTTP trigger on NAME:live
    out = faas(r, "alias", "set", name, "live", "1", "--description", "prod")
    assert f"{name}:live -> version 1" in out.stdout
    out = faas(r, "trigger", "add", f"{name}:live", "GET", "/ver-app")
    assert out.stdout.strip() == f"GET /ver-app -> {name}:live  {r.edge}/ver-app"
    got = requests.get(r.edge + "/ver-app", timeout=30)
    assert got.json()["code"] == "one" and got.headers["x-amz-executed-version"] == "1"

    # Move it to 2 with a quarter of the requests still on 1.
    moved = json.loads(faas(r, "alias", "set", name, "live", "2", "--weight", "1=0.25", "-o", "json").stdout)
    assert (moved["version"], moved["weights"]) == (2, {"1": 0.25})
    n, counts = 400, {"1": 0, "2": 0}
    with requests.Session() as s:
        for _ in range(n):
            resp = s.get(r.edge + "/ver-app", timeout=30)
            assert resp.status_code == 200, resp.text
            v = resp.headers["x-amz-executed-version"]
            counts[v] += 1
            assert resp.json()["colour"] == {"1": "blue", "2": "green"}[v]  # that version's settings
    sigma = math.sqrt(n * 0.25 * 0.75)
    assert abs(counts["1"] - n * 0.25) <= 5 * sigma, counts

    described = faas(r, "describe", name).stdout
    assert "alias live -> 2, 0.25 to 1" in described and "(published 1)" in described, described
    assert "GET     /ver-app" in described and f"-> {name}:live" in described

    # Records carry the executed version and the alias.
    def records():
        rows = r.http.get(f"{api}/{name}/invocations", params={"limit": 1000}, timeout=10).json()["invocations"]
        return rows if len([x for x in rows if x["alias"] == "live"]) >= n + 1 else None
    rows = wait_for(records, 10, message="the records of the alias's requests")
    via_alias = [x for x in rows if x["alias"] == "live"]
    assert {x["executed_version"] for x in via_alias} == {"1", "2"}
    assert sum(x["executed_version"] == "1" for x in via_alias) == counts["1"] + 1  # the first GET ran 1
    assert {x["executed_version"] for x in rows if x["alias"] is None} == {"$LATEST", "1", "2"}
    assert {x["version"] for x in via_alias if x["executed_version"] == "2"} == {2}  # the code version

    # In use: the alias routes to both versions, a trigger targets the alias.
    resp = r.http.delete(f"{api}/{name}/published/2", timeout=10)
    assert resp.status_code == 409 and resp.json()["error"]["code"] == "Version.InUse"
    resp = r.http.delete(f"{api}/{name}/aliases/live", timeout=10)
    assert resp.status_code == 409 and resp.json()["error"]["code"] == "Alias.InUse"
    assert faas(r, "unpublish", name, "1", check=False).returncode == 1

    # Bad aliases and weights: 400 with the field; missing versions and aliases: 404.
    for alias, body, status, code, field in (
            ("123", {"version": 1}, 400, "Request.Invalid", "name"),
            ("beta", {"version": 1, "weights": {"2": 1.5}}, 400, "Request.Invalid", "weights"),
            ("beta", {"version": 1, "weights": {"1": 0.5}}, 400, "Request.Invalid", "weights"),
            ("beta", {"version": 1, "weights": {"2": 0.1, "3": 0.1}}, 400, "Request.Invalid", "weights"),
            ("beta", {"version": 9}, 404, "Version.NotFound", "version")):
        resp = r.http.put(f"{api}/{name}/aliases/{alias}", json=body, timeout=10)
        err = resp.json()["error"]
        assert (resp.status_code, err["code"], err.get("field")) == (status, code, field), resp.text
    resp = r.http.post(f"{api}/{name}:nope/invocations", json={}, timeout=10)
    assert resp.status_code == 404 and resp.json()["error"]["code"] == "Alias.NotFound"
    resp = r.http.post(f"{api}/{name}:7/invocations", json={}, timeout=10)
    assert resp.status_code == 404 and resp.json()["error"]["code"] == "Version.NotFound"
    resp = r.http.post(f"{r.api_url}/v1/triggers", json={"function": f"{name}:nope", "method": "GET",
                                                          "path": "/nope"}, timeout=10)
    assert resp.status_code == 404 and resp.json()["error"]["code"] == "Alias.NotFound"
    out = faas(r, "alias", "set", name, "beta", "1", "--weight", "2=2", check=False)
    assert out.returncode == 1 and "field: weights" in out.stderr

    # The CLI reads them back; invoke through the alias.
    aliases = json.loads(faas(r, "alias", "ls", name, "-o", "json").stdout)
    assert [(a["name"], a["version"], a["weights"]) for a in aliases] == [("live", 2, {"1": 0.25})]
    assert json.loads(faas(r, "alias", "get", name, "live", "-o", "json").stdout)["description"] == ""
    assert "live" in faas(r, "alias", "ls", name).stdout
    assert json.loads(faas(r, "invoke", f"{name}:2").stdout)["code"] == "two"

    # Rollback is moving the alias back; then version 2 can go once nothing points at it.
    faas(r, "alias", "set", name, "live", "1")
    assert requests.get(r.edge + "/ver-app", timeout=30).headers["x-amz-executed-version"] == "1"
    assert json.loads(faas(r, "unpublish", name, "2", "-o", "json").stdout)["deleted"]["version"] == 2
    r.http.delete(f"{r.api_url}/v1/triggers", params={"method": "GET", "path": "/ver-app"}, timeout=10)
    assert json.loads(faas(r, "alias", "rm", name, "live", "-o", "json").stdout)["deleted"]["name"] == "live"

    # Deleting the function deletes its published versions.
    r.api.delete_function(name)
    r.api.create_function(name=name)
    assert r.http.get(f"{api}/{name}/published", timeout=10).json() == {"versions": []}
    r.api.delete_function(name)


def test_tokens_scope_publish_aliases_and_qualified_invokes(appliance):
    r = appliance
    api = f"{r.api_url}/v1/functions"
    name = r.deploy({"index.py": CODE % "one"}, name="ver-tok")
    r.http.post(f"{api}/{name}/publish", json={}, timeout=10)

    def token(scope, functions=None):
        return r.api.create_token(f"{name}-{scope}", scope, functions=functions)["token"]

    reader = {"Authorization": f"Bearer {token('read')}"}
    invoker = {"Authorization": f"Bearer {token('invoke', 'ver-tok')}"}
    assert requests.get(f"{api}/{name}/published", headers=reader, timeout=10).status_code == 200
    assert requests.post(f"{api}/{name}/publish", headers=reader, json={}, timeout=10).status_code == 403
    assert requests.put(f"{api}/{name}/aliases/live", headers=reader, json={"version": 1},
                        timeout=10).status_code == 403
    # The function pattern applies to the bare name.
    resp = requests.post(f"{api}/{name}:1/invocations", headers=invoker, json={}, timeout=30)
    assert resp.status_code == 200 and resp.headers["X-Amz-Executed-Version"] == "1"
    # A deploy token for the function may bind a trigger to one of its versions, and sees it listed.
    deployer = {"Authorization": f"Bearer {token('deploy', 'ver-tok')}"}
    bound = requests.post(f"{api}/{name}:1/triggers", headers=deployer, json={"method": "GET", "path": "/ver-tok"},
                          timeout=10)
    assert bound.status_code == 201 and bound.json()["function"] == f"{name}:1", bound.text
    listed = requests.get(f"{r.api_url}/v1/triggers", headers=deployer, timeout=10).json()["triggers"]
    assert [t["function"] for t in listed if t.get("path") == "/ver-tok"] == [f"{name}:1"]
    assert requests.get(r.edge + "/ver-tok", timeout=30).headers["x-amz-executed-version"] == "1"
    # An asynchronous event to a version runs that version; it is listed under its target.
    queued = requests.post(f"{api}/{name}:1/invocations", headers=invoker, json={}, params={"type": "event"},
                           timeout=10)
    assert queued.status_code == 202, queued.text

    def done():
        got = r.http.get(f"{api}/{name}:1/events", timeout=10).json()
        return got if got["counts"].get("succeeded") == 1 else None
    wait_for(done, 20, message="the event to version 1 to succeed")
    rows = r.http.get(f"{api}/{name}/invocations", timeout=10).json()["invocations"]
    assert [x["executed_version"] for x in rows if x["trigger"] == "async"] == ["1"]
    # A schedule that targets a version keeps it from being deleted.
    sched = r.http.post(f"{r.api_url}/v1/triggers", json={"kind": "schedule", "function": f"{name}:1",
                                                           "schedule": "rate(1 day)"}, timeout=10)
    assert sched.status_code == 201 and sched.json()["function"] == f"{name}:1"
    resp = r.http.delete(f"{api}/{name}/published/1", timeout=10)
    assert resp.status_code == 409 and resp.json()["error"]["code"] == "Version.InUse"
    assert "schedule" in resp.json()["error"]["message"]
    other = r.deploy(name="ver-other")
    r.http.post(f"{api}/{other}/publish", json={}, timeout=10)
    assert requests.post(f"{api}/{other}:1/invocations", headers=invoker, json={}, timeout=30).status_code == 403
    for n in (name, other):
        r.api.delete_function(n)


def test_moving_an_alias_prewarms_the_new_versions_min_instances(appliance):
    r = appliance
    api = f"{r.api_url}/v1/functions"
    name = r.deploy({"index.py": CODE % "one"}, name="ver-warm", min_instances=1, keep_alive_s=1)
    r.http.post(f"{api}/{name}/publish", json={}, timeout=10)
    # Before an alias routes to version 1, it keeps no instance of its own.
    assert all(i["executed_version"] == "$LATEST" for i in r.instances(name))
    resp = r.http.put(f"{api}/{name}/aliases/live", json={"version": 1}, timeout=60)
    assert resp.status_code == 200 and "warnings" not in resp.json(), resp.text
    # The alias answered only once version 1's instance was ready: it is listed at once.
    assert "1" in {i["executed_version"] for i in r.instances(name)}
    resp = r.http.post(f"{api}/{name}:live/invocations", json={}, timeout=30)
    assert resp.status_code == 200 and resp.headers["X-Faas-Cold-Start"] == "0"
    # Version 2; the alias moves to it (pre-warmed), and version 1's instance goes by its keep-alive
    # (1 s: a version's keep-alive is its own, as published).
    r.api.update_function(name, environment={"COLOUR": "green"})
    r.http.post(f"{api}/{name}/publish", json={}, timeout=10)
    resp = r.http.put(f"{api}/{name}/aliases/live", json={"version": 2}, timeout=60)
    assert resp.status_code == 200 and "warnings" not in resp.json(), resp.text
    assert "2" in {i["executed_version"] for i in r.instances(name)}
    wait_for(lambda: "1" not in {i["executed_version"] for i in r.instances(name)}, 15,
             message="version 1's instance to go after its keep-alive")
    assert "2" in {i["executed_version"] for i in r.instances(name)}  # kept: the alias routes to it
    r.api.delete_function(name)
