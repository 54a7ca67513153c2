"""Trust: nobody deploys, reads or invokes what they are not allowed to.

Each attack of the threat model is tried the way an attacker would, against a real appliance:
a local process without a token, a token of the wrong scope, an expired or revoked one, a web page
on another origin (in a real browser), a rebinding ``Host``, a function that turns on the control
API and the edge's internal paths from inside its instance. And the user-facing parts: tokens
through the CLI, the admin token found with no ceremony, secrets that never come back, errors that
tell anonymous callers nothing of the function's internals.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import socket
import stat
import subprocess
import sys
import threading

import pytest
import requests

from .conftest import REPO, make_zip, wait_for

SECRET_VALUE = "s3cr3t-value-7f9c2e"

PROBE = r'''
import json, os, urllib.request, urllib.error

def handler(event, context):
    if event.get("version") == "2.0":  # through an HTTP trigger: the JSON body is the request
        event = json.loads(event.get("body") or "{}")
    if "fail" in event:
        raise ValueError("detail only the owner may read: " + event["fail"])
    if "env" in event:
        return {"matches": os.environ.get(event["env"]) == event["expect"], "present": event["env"] in os.environ}
    out = {}
    for url in event.get("urls", []):
        req = urllib.request.Request(url, method="GET")
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                out[url] = resp.status
        except urllib.error.HTTPError as e:
            out[url] = e.code
        except OSError as e:
            out[url] = "refused: " + type(e).__name__
    return out
'''


@pytest.fixture(scope="module")
def probe(appliance):
    return appliance.deploy({"index.py": PROBE}, name="probe", trigger=("ANY", "/probe"))


def anon(method, url, **kw):
    return requests.request(method, url, timeout=10, **kw)


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


def make_token(r, name, scope, **extra):
    resp = r.http.post(f"{r.api_url}/v1/tokens", json={"name": name, "scope": scope, **extra}, timeout=10)
    assert resp.status_code == 201, resp.text
    return resp.json()["token"]


# -- 1. tokens ----------------------------------------------------------------------------------

def test_without_a_token_every_v1_call_is_refused_but_health(appliance, probe):
    for method, path in [("GET", "/v1/functions"), ("POST", "/v1/functions"), ("GET", f"/v1/functions/{probe}/code"),
                         ("GET", "/v1/triggers"), ("GET", "/v1/usage"), ("GET", "/v1/tokens"),
                         ("POST", f"/v1/functions/{probe}/invocations"), ("DELETE", f"/v1/functions/{probe}")]:
        resp = anon(method, appliance.api_url + path, json={"name": "nope"})
        assert resp.status_code == 401, (method, path, resp.text)
        assert resp.json()["error"]["code"] == "Auth.Required"
        assert resp.headers["WWW-Authenticate"].startswith('Bearer realm="faas"')
    health = anon("GET", appliance.api_url + "/v1/health")
    assert health.status_code == 200 and health.json() == {"status": "ok", "role": "control"}
    assert appliance.api.get_function(probe)["name"] == probe  # still there


def test_an_unknown_token_is_refused(appliance):
    resp = anon("GET", appliance.api_url + "/v1/functions", headers=bearer("faas_" + "A" * 43))
    assert resp.status_code == 401 and resp.json()["error"]["code"] == "Auth.InvalidToken"
    assert 'error="invalid_token"' in resp.headers["WWW-Authenticate"]


def test_scopes_allow_what_they_say_and_nothing_more(appliance, probe):
    read = make_token(appliance, "t-read", "read")
    assert anon("GET", f"{appliance.api_url}/v1/functions", headers=bearer(read)).status_code == 200
    refused = anon("POST", f"{appliance.api_url}/v1/functions", headers=bearer(read), json={"name": "by-reader"})
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "Auth.Forbidden"
    assert anon("POST", f"{appliance.api_url}/v1/functions/{probe}/invocations", headers=bearer(read),
                json={}).status_code == 403
    assert anon("GET", f"{appliance.api_url}/v1/tokens", headers=bearer(read)).status_code == 403

    shop = make_token(appliance, "t-shop", "deploy", functions="shop-*")
    h = bearer(shop)
    assert anon("POST", f"{appliance.api_url}/v1/functions", headers=h, json={"name": "shop-cart"}).status_code == 201
    assert anon("PUT", f"{appliance.api_url}/v1/functions/shop-cart/code", headers={**h, "Content-Type": "application/zip"},
                data=make_zip({"index.py": "def handler(e, c):\n    return 'cart'\n"})).status_code == 201
    assert anon("POST", f"{appliance.api_url}/v1/triggers", headers=h,
                json={"function": "shop-cart", "method": "GET", "path": "/cart"}).status_code == 201
    assert anon("POST", f"{appliance.api_url}/v1/functions/shop-cart/invocations", headers=h, json={}).json() == "cart"
    other = anon("POST", f"{appliance.api_url}/v1/functions", headers=h, json={"name": "payroll"})
    assert other.status_code == 403 and "payroll" in other.json()["error"]["message"]
    assert anon("PATCH", f"{appliance.api_url}/v1/functions/{probe}", headers=h, json={"memory_mb": 256}).status_code == 403
    assert anon("POST", f"{appliance.api_url}/v1/triggers", headers=h,
                json={"function": probe, "method": "GET", "path": "/hijack"}).status_code == 403
    assert anon("DELETE", f"{appliance.api_url}/v1/triggers", headers=h,
                params={"method": "ANY", "path": "/probe"}).status_code == 403
    listed = anon("GET", f"{appliance.api_url}/v1/functions", headers=h).json()["functions"]
    assert [f["name"] for f in listed] == ["shop-cart"]  # a narrowed token sees only its functions
    assert anon("POST", f"{appliance.api_url}/v1/tokens", headers=h, json={"name": "x", "scope": "admin"}).status_code == 403

    inv = make_token(appliance, "t-invoke", "invoke", functions="shop-*")
    h = bearer(inv)
    assert anon("POST", f"{appliance.api_url}/v1/functions/shop-cart/invocations", headers=h, json={}).json() == "cart"
    assert anon("GET", f"{appliance.api_url}/v1/functions/shop-cart/invocations", headers=h).status_code == 200
    assert anon("GET", f"{appliance.api_url}/v1/functions/shop-cart/logs", headers=h).status_code == 200
    assert anon("POST", f"{appliance.api_url}/v1/functions/{probe}/invocations", headers=h, json={}).status_code == 403
    assert anon("PATCH", f"{appliance.api_url}/v1/functions/shop-cart", headers=h, json={"memory_mb": 256}).status_code == 403
    assert anon("GET", f"{appliance.api_url}/v1/functions/shop-cart/code", headers=h).status_code == 403


def test_an_expired_token_stops_working(appliance):
    short = make_token(appliance, "t-short", "read", expires=1)
    url = f"{appliance.api_url}/v1/functions"

    def refused():
        resp = anon("GET", url, headers=bearer(short))
        return resp.status_code == 401 and resp.json()["error"]["code"] == "Auth.InvalidToken" and resp.json()
    body = wait_for(refused, 15, interval_s=0.1, message="the token to expire")
    assert "expired" in body["error"]["message"]


def test_a_revoked_token_stops_working(appliance):
    t = make_token(appliance, "t-revoked", "read")
    url = f"{appliance.api_url}/v1/functions"
    assert anon("GET", url, headers=bearer(t)).status_code == 200
    assert appliance.http.delete(f"{appliance.api_url}/v1/tokens/t-revoked", timeout=10).status_code == 200
    wait_for(lambda: anon("GET", url, headers=bearer(t)).status_code == 401, 10, interval_s=0.05,
             message="the revocation to take effect")
    names = [x["name"] for x in appliance.http.get(f"{appliance.api_url}/v1/tokens", timeout=10).json()["tokens"]]
    assert "t-revoked" not in names


def test_tokens_are_stored_only_as_hashes_and_changes_are_logged_with_the_token_name(appliance):
    secret = make_token(appliance, "t-hashed", "deploy")
    listed = appliance.http.get(f"{appliance.api_url}/v1/tokens", timeout=10).json()["tokens"]
    assert not any(secret in json.dumps(t) for t in listed) and all("sha256" not in t for t in listed)
    assert len(secret) >= 43 + len("faas_")  # 256 random bits, url-safe base64
    db = (appliance.data_dir / "metadata.sqlite3").read_bytes() + (appliance.data_dir / "metadata.sqlite3-wal").read_bytes()
    assert secret.encode() not in db and appliance.token.encode() not in db
    anon("POST", f"{appliance.api_url}/v1/functions", headers=bearer(secret), json={"name": "audited"})
    wait_for(lambda: "event=api_change token=t-hashed method=POST path=/v1/functions status=201" in appliance.log(),
             10, message="the change in the log")
    assert secret not in appliance.log() and appliance.token not in appliance.log()


# -- 2. first start ------------------------------------------------------------------------------

def test_first_start_writes_a_private_admin_token_and_logs_only_its_path(appliance):
    path = appliance.data_dir / "admin.token"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(appliance.data_dir.stat().st_mode) == 0o700
    for name in ("metadata.sqlite3", "invocations.sqlite3", "secrets.key", "internal.token"):
        assert stat.S_IMODE((appliance.data_dir / name).stat().st_mode) == 0o600, name
    assert str(path) in appliance.log() and appliance.token not in appliance.log()


def faas_cli(args, *, env=None, cwd=None):
    full = {k: v for k, v in os.environ.items() if not k.startswith(("FAAS_", "APPLIANCE_"))}
    full.update(env or {})
    full["PYTHONPATH"] = str(REPO)
    return subprocess.run([sys.executable, "-m", "appliance", *args], cwd=str(cwd or REPO), env=full,
                          capture_output=True, text=True, timeout=60)


def test_the_cli_finds_the_token_in_the_data_directory_then_env_then_config(appliance, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    base = {"HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config")}
    # The data directory: the API URL and the admin token both come from it.
    out = faas_cli(["ls"], env={**base, "APPLIANCE_DATA_DIR": str(appliance.data_dir)})
    assert out.returncode == 0 and "probe" in out.stdout, out.stderr
    # FAAS_TOKEN wins over the data directory.
    out = faas_cli(["ls"], env={**base, "APPLIANCE_DATA_DIR": str(appliance.data_dir), "FAAS_TOKEN": "faas_wrong"})
    assert out.returncode == 1 and "Auth.InvalidToken" in out.stderr
    # Nothing found: the error says where a token is looked for.
    out = faas_cli(["--api", appliance.api_url, "ls"], env={**base, "APPLIANCE_DATA_DIR": str(tmp_path / "none")})
    assert out.returncode == 1 and "Auth.Required" in out.stderr and "FAAS_TOKEN" in out.stderr
    # The config file.
    (home / ".config" / "faas").mkdir(parents=True)
    (home / ".config" / "faas" / "config").write_text(f"# faas\napi = {appliance.api_url}\ntoken = {appliance.token}\n")
    out = faas_cli(["ls"], env={**base, "APPLIANCE_DATA_DIR": str(tmp_path / "none")})
    assert out.returncode == 0 and "probe" in out.stdout, out.stderr


def test_token_commands_print_the_token_once(appliance, tmp_path):
    env = {"FAAS_TOKEN": appliance.token, "FAAS_API": appliance.api_url, "HOME": str(tmp_path)}
    made = faas_cli(["token", "create", "ci", "--scope", "deploy", "--functions", "ci-*", "--expires", "30d"], env=env)
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    assert token.startswith("faas_") and "shown this once" in made.stderr
    listed = faas_cli(["token", "ls"], env=env)
    assert "ci" in listed.stdout and "ci-*" in listed.stdout and "deploy" in listed.stdout and token not in listed.stdout
    bad = faas_cli(["token", "create", "bad", "--scope", "read", "--functions", "x-*"], env=env)
    assert bad.returncode == 1 and "Request.Invalid" in bad.stderr
    out = faas_cli(["ls"], env={**env, "FAAS_TOKEN": token})
    assert out.returncode == 0
    assert faas_cli(["token", "revoke", "ci"], env=env).stdout.strip() == "revoked ci"
    wait_for(lambda: faas_cli(["ls"], env={**env, "FAAS_TOKEN": token}).returncode == 1, 10,
             message="the revoked token to be refused")


# -- 3. browser safety ---------------------------------------------------------------------------

def test_a_foreign_origin_and_a_simple_text_plain_post_are_refused(appliance):
    url = f"{appliance.api_url}/v1/functions"
    body = json.dumps({"name": "csrf-victim"})
    # Even a request that somehow carries a valid token is refused from another origin...
    resp = anon("POST", url, data=body, headers={**appliance.auth, "Origin": "http://127.0.0.1:1",
                                                "Content-Type": "text/plain"})
    assert resp.status_code == 403 and resp.json()["error"]["code"] == "Auth.ForeignOrigin"
    # ...and a text/plain body is not a JSON body, whoever sends it.
    resp = anon("POST", url, data=body, headers={**appliance.auth, "Content-Type": "text/plain"})
    assert resp.status_code == 415 and resp.json()["error"]["code"] == "Request.UnsupportedMediaType"
    resp = anon("PUT", f"{url}/probe/code", params={"filename": "index.py"}, data=b"x = 1\n",
                headers={**appliance.auth, "Content-Type": "text/plain"})
    assert resp.status_code == 415
    # The API's own origin (the console) is fine.
    same = anon("GET", url, headers={**appliance.auth, "Origin": appliance.api_url})
    assert same.status_code == 200 and "Access-Control-Allow-Origin" not in same.headers
    assert "csrf-victim" not in [f["name"] for f in appliance.api.list_functions()]


def test_a_host_the_appliance_does_not_serve_is_refused(appliance):
    """DNS rebinding: the attacker's name resolves to 127.0.0.1, and the browser sends that name."""
    resp = anon("GET", f"{appliance.api_url}/v1/functions", headers={**appliance.auth, "Host": "attacker.example:8081"})
    assert resp.status_code == 421 and resp.json()["error"]["code"] == "Request.BadHost"
    port = appliance.api_url.rsplit(":", 1)[1]
    for host in (f"localhost:{port}", f"127.0.0.1:{port}"):
        assert anon("GET", f"{appliance.api_url}/v1/functions", headers={**appliance.auth, "Host": host}).status_code == 200


ATTACK_PAGE = """<!doctype html><title>cute cats</title><script>
window.attack = async (api) => {
  const out = {};
  try {
    await fetch(api + "/v1/functions", {method: "POST", mode: "no-cors", headers: {"Content-Type": "text/plain"},
                                        body: JSON.stringify({name: "browser-pwned"})});
    out.post = "sent";
  } catch (e) { out.post = "failed: " + e; }
  try {
    const r = await fetch(api + "/v1/functions");
    out.read = "read: " + (await r.text());
  } catch (e) { out.read = "blocked"; }
  try {
    const r = await fetch(api + "/v1/functions", {method: "POST", headers: {"Content-Type": "application/json"},
                                                  body: JSON.stringify({name: "browser-pwned-2"})});
    out.json_post = "status " + r.status;
  } catch (e) { out.json_post = "blocked"; }
  return out;
};
</script>"""


def test_a_page_on_another_loopback_origin_cannot_use_the_api_through_the_browser(appliance, tmp_path):
    pw = pytest.importorskip("playwright.sync_api")
    (tmp_path / "index.html").write_text(ATTACK_PAGE)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with pw.sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=[
                "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"])
            try:
                page = browser.new_page()
                page.goto(f"http://127.0.0.1:{server.server_address[1]}/index.html")
                out = page.evaluate("api => window.attack(api)", appliance.api_url)
            finally:
                browser.close()
    finally:
        server.shutdown()
    assert out["read"] == "blocked", out          # no CORS grant: the page reads nothing
    assert out["json_post"] == "blocked", out     # the preflight gets no grant: never sent
    names = [f["name"] for f in appliance.api.list_functions()]
    assert "browser-pwned" not in names and "browser-pwned-2" not in names
    # The simple POST did reach the API, and the API refused it (the browser only hid the answer).
    wait_for(lambda: "method=POST path=/v1/functions status=403" in appliance.log(), 10,
             message="the refused cross-origin POST in the log")


# -- 4. the edge's internal paths ----------------------------------------------------------------

def test_the_edge_serves_only_health_and_ready_to_anyone(appliance, probe):
    appliance.get("/probe")  # something to show
    assert anon("GET", appliance.edge + "/_/health").status_code == 200
    assert anon("GET", appliance.edge + "/_/ready").status_code == 200
    for path in ("/_/invocations", "/_/usage", "/_/series", "/_/stats", "/_/concurrency", f"/_/scaling/{probe}"):
        resp = anon("GET", appliance.edge + path)
        assert resp.status_code == 401 and resp.json()["error"]["code"] == "Auth.Required", (path, resp.text)
        assert anon("GET", appliance.edge + path, headers=bearer(appliance.token)).status_code == 401  # not the admin's
    internal = (appliance.data_dir / "internal.token").read_text().strip()
    wait_for(lambda: anon("GET", appliance.edge + "/_/invocations", headers=bearer(internal),
                          params={"function": probe}).json()["invocations"], 10, message="records with the credential")
    # The control plane shows them to a token holder through the API.
    assert appliance.api.invocations(probe)


def test_a_function_cannot_use_the_control_api_or_the_edge_internal_paths(appliance, probe):
    urls = [f"{appliance.api_url}/v1/functions", f"{appliance.api_url}/v1/functions/{probe}/code",
            f"{appliance.api_url}/v1/tokens", f"{appliance.edge}/_/invocations", f"{appliance.edge}/_/usage",
            f"{appliance.edge}/_/stats", f"{appliance.edge}/_/concurrency"]
    got = appliance.api.invoke(probe, {"urls": urls})
    for url in urls:
        # 401 while instances share the host's loopback; refused outright once a packet filter keeps them off it.
        assert got[url] == 401 or str(got[url]).startswith("refused"), (url, got)
    # It holds no credential of the appliance either.
    for name in ("FAAS_TOKEN", "APPLIANCE_INTERNAL_TOKEN", "APPLIANCE_ADMIN_TOKEN", "APPLIANCE_SECRETS_KEY"):
        assert appliance.api.invoke(probe, {"env": name, "expect": None})["present"] is False


def test_edge_and_api_listen_on_their_own_addresses(make_appliance):
    r = make_appliance(env={"APPLIANCE_EDGE_HOST": "127.0.0.2", "APPLIANCE_API_HOST": "127.0.0.1"})
    assert r.edge.startswith("http://127.0.0.2:") and r.api_url.startswith("http://127.0.0.1:")
    assert anon("GET", r.edge + "/_/health").status_code == 200
    api_port = int(r.api_url.rsplit(":", 1)[1])
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.2", api_port), timeout=2).close()
    edge_port = int(r.edge.rsplit(":", 1)[1])
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", edge_port), timeout=2).close()


# -- 7. secrets ----------------------------------------------------------------------------------

def test_secrets_reach_the_instance_and_never_come_back(appliance, tmp_path):
    src = tmp_path / "vault"
    src.mkdir()
    (src / "index.py").write_text(PROBE)
    out = faas_cli(["deploy", str(src), "--name", "vault", "--secret", f"API_KEY={SECRET_VALUE}", "--env", "MODE=x"],
                   env={"FAAS_TOKEN": appliance.token, "FAAS_API": appliance.api_url, "HOME": str(tmp_path)})
    assert out.returncode == 0, out.stderr
    assert SECRET_VALUE not in out.stdout + out.stderr and json.loads(out.stdout)["secrets"] == {"API_KEY": "****"}
    assert appliance.api.invoke("vault", {"env": "API_KEY", "expect": SECRET_VALUE}) == {"matches": True,
                                                                                        "present": True}
    fn = appliance.api.get_function("vault")
    assert fn["secrets"] == {"API_KEY": "****"} and fn["environment"] == {"MODE": "x"}
    # Sending back what was read keeps the value; another update leaves it alone too.
    appliance.api.update_function("vault", secrets={"API_KEY": "****"}, memory_mb=256)
    assert appliance.api.invoke("vault", {"env": "API_KEY", "expect": SECRET_VALUE})["matches"] is True
    described = faas_cli(["describe", "vault"], env={"FAAS_TOKEN": appliance.token, "FAAS_API": appliance.api_url,
                                                      "HOME": str(tmp_path)})
    assert "****" in described.stdout and SECRET_VALUE not in described.stdout
    listing = appliance.http.get(f"{appliance.api_url}/v1/functions", timeout=10).text
    assert SECRET_VALUE not in listing
    # Not in the metadata store in the clear, not in the appliance's log.
    db = b"".join((appliance.data_dir / n).read_bytes() for n in ("metadata.sqlite3", "metadata.sqlite3-wal")
                  if (appliance.data_dir / n).exists())
    assert SECRET_VALUE.encode() not in db
    assert SECRET_VALUE not in appliance.log()
    # Other functions do not see it.
    other = appliance.deploy({"index.py": PROBE})
    assert appliance.api.invoke(other, {"env": "API_KEY", "expect": SECRET_VALUE}) == {"matches": False,
                                                                                       "present": False}
    # A null removes it.
    appliance.api.update_function("vault", secrets={"API_KEY": None})
    assert appliance.api.get_function("vault")["secrets"] == {}


# -- 8. errors -----------------------------------------------------------------------------------

def test_anonymous_trigger_callers_get_only_the_code_and_request_id(appliance, probe):
    resp = appliance.get("/probe", params={"x": "1"}, headers={"Content-Type": "application/json"})
    assert resp.status_code == 200
    failing = anon("POST", appliance.edge + "/probe", json={"fail": "tell-nobody"})
    assert failing.status_code == 502, failing.text
    err = failing.json()["error"]
    assert err["code"] == "Function.Error" and err["requestId"] == failing.headers["X-Request-Id"]
    assert "tell-nobody" not in failing.text and "stackTrace" not in failing.text and "index.py" not in failing.text
    # An authorised user reads the whole error: direct invoke, and the invocation record.
    direct = appliance.http.post(f"{appliance.api_url}/v1/functions/{probe}/invocations", json={"fail": "owner-sees"},
                                 timeout=30)
    assert "owner-sees" in direct.json()["error"]["function"]["errorMessage"]
    rows = appliance.api.invocations(probe, request_id=err["requestId"])
    assert rows and "tell-nobody" in (rows[0]["error_message"] or "")


def test_expose_errors_turns_the_detail_back_on(appliance):
    name = appliance.deploy({"index.py": PROBE}, trigger=("POST", "/dev-probe"), expose_errors=True)
    failing = anon("POST", appliance.edge + "/dev-probe", json={"fail": "for-the-developer"})
    assert failing.status_code == 502 and "for-the-developer" in failing.text
    assert failing.json()["error"]["function"]["stackTrace"]
    appliance.api.update_function(name, expose_errors=False)
    wait_for(lambda: "for-the-developer" not in anon("POST", appliance.edge + "/dev-probe",
                                                     json={"fail": "for-the-developer"}).text,
             10, message="the setting to reach the edge")
