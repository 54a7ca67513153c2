"""Trigger authentication and CORS through real HTTP: the API sets them, the edge enforces them.

Every refusal is checked for what a user relies on: 401 ``Trigger.Unauthorized`` with a
``WWW-Authenticate`` challenge, and the function never ran (no invocation record, no instance).
"""

from __future__ import annotations

import http.server
import json
import threading
import time
import uuid

import jwt
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from appliance.core.trigger_policy import hmac_signature

from .conftest import make_zip
from .test_cli import faas

ECHO = ("import json\n"
        "def handler(event, context):\n"
        "    return {'statusCode': 200, 'headers': {'Content-Type': 'application/json',\n"
        "            'Access-Control-Allow-Origin': 'https://evil.example'},\n"
        "            'body': json.dumps({'authorizer': event['requestContext'].get('authorizer'),\n"
        "                                'body': event.get('body')})}\n")


def deploy(appliance, method: str, path: str, **trigger) -> str:
    name = f"auth-{uuid.uuid4().hex[:8]}"
    appliance.api.create_function(name=name)
    appliance.api.upload_code(name, make_zip({"index.py": ECHO}))
    appliance.api.add_trigger(name, method, path, **trigger)
    return name


def refused(resp, scheme: str) -> None:
    assert resp.status_code == 401, resp.text
    assert resp.json()["error"]["code"] == "Trigger.Unauthorized"
    assert resp.headers["WWW-Authenticate"].startswith(scheme)


def never_ran(appliance, name: str) -> None:
    records = appliance.http.get(f"{appliance.api_url}/v1/functions/{name}/invocations", timeout=10).json()
    assert records["invocations"] == []
    assert appliance.instances(name) == []


def test_bearer_keys_shown_once_hashed_and_revocable(appliance):
    name = deploy(appliance, "GET", "/bearer", auth={"type": "bearer"})
    url = appliance.edge + "/bearer"
    refused(requests.get(url, timeout=10), "Bearer")
    refused(requests.get(url, headers={"Authorization": "Bearer fk_wrong"}, timeout=10), "Bearer")
    refused(requests.get(url, headers={"Authorization": "Basic Zm9vOmJhcg=="}, timeout=10), "Bearer")
    never_ran(appliance, name)

    made = appliance.api.create_trigger_key("GET", "/bearer", name="ci")
    key = made["key"]
    assert key.startswith("fk_") and len(key) >= 43 and made["name"] == "ci"
    ok = requests.get(url, headers={"Authorization": f"Bearer {key}"}, timeout=30)
    assert ok.status_code == 200, ok.text
    assert ok.json()["authorizer"] is None
    # The key is never shown again, in any listing.
    for listing in (appliance.http.get(f"{appliance.api_url}/v1/triggers/keys",
                                       params={"method": "GET", "path": "/bearer"}, timeout=10).text,
                    appliance.http.get(f"{appliance.api_url}/v1/triggers", timeout=10).text,
                    appliance.http.get(f"{appliance.api_url}/v1/functions/{name}", timeout=10).text):
        assert key not in listing and key[7:] not in listing
    keys = appliance.api.list_trigger_keys("GET", "/bearer")
    assert [(k["name"], k["type"], k["hint"]) for k in keys] == [("ci", "bearer", key[:7])]

    appliance.api.revoke_trigger_key("GET", "/bearer", "ci")
    refused(requests.get(url, headers={"Authorization": f"Bearer {key}"}, timeout=10), "Bearer")


def test_hmac_signed_requests_window_and_replay(appliance):
    name = deploy(appliance, "POST", "/hook", auth={"type": "hmac"})
    url = appliance.edge + "/hook"
    body = b'{"event": "push"}'
    refused(requests.post(url, data=body, timeout=10), "FaasSignature")
    never_ran(appliance, name)
    secret = appliance.api.create_trigger_key("POST", "/hook")["key"]
    assert secret not in appliance.http.get(f"{appliance.api_url}/v1/triggers", timeout=10).text

    def signed(ts: int, payload: bytes = body, sign_with: str = secret, sign_body: bytes | None = None):
        sig = hmac_signature(sign_with, str(ts), payload if sign_body is None else sign_body)
        return requests.post(url, data=payload, timeout=30,
                             headers={"X-Faas-Timestamp": str(ts), "X-Faas-Signature": sig,
                                      "Content-Type": "application/json"})

    now = int(time.time())
    ok = signed(now)
    assert ok.status_code == 200, ok.text
    assert ok.json()["body"] == body.decode()
    refused(signed(now), "FaasSignature")                                   # the same signature again: a replay
    assert "already used" in signed(now).json()["error"]["message"]
    refused(signed(now - 360), "FaasSignature")                             # outside the 5-minute window
    refused(signed(now + 360), "FaasSignature")                             # (a margin: time passes meanwhile)
    refused(signed(now, sign_with="fhs_not-the-secret"), "FaasSignature")   # wrong secret
    refused(signed(now, sign_body=b'{"event": "tampered"}'), "FaasSignature")
    assert signed(now + 1).status_code == 200                               # a new request, signed anew


@pytest.fixture(scope="module")
def rsa_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def pem(private) -> str:
    return private.public_key().public_bytes(serialization.Encoding.PEM,
                                             serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def token(private, alg="RS256", *, kid=None, **claims) -> str:
    now = int(time.time())
    body = {"iss": "https://issuer.test/", "aud": "faas-api", "sub": "user-1", "iat": now, "exp": now + 300,
            "scope": "read write", **claims}
    body = {k: v for k, v in body.items() if v is not None}
    return jwt.encode(body, private, algorithm=alg, headers={"kid": kid} if kid else None)


def test_jwt_with_a_pem_key_claims_reach_the_function(appliance, rsa_key):
    name = deploy(appliance, "GET", "/jwt", auth={"type": "jwt", "issuer": "https://issuer.test/",
                                                  "audience": ["faas-api"], "public_key": pem(rsa_key)})
    url = appliance.edge + "/jwt"

    def call(tok):
        return requests.get(url, headers={"Authorization": f"Bearer {tok}"}, timeout=30)

    refused(requests.get(url, timeout=10), "Bearer")
    expired = call(token(rsa_key, exp=int(time.time()) - 3600))
    refused(expired, "Bearer")
    assert "expired" in expired.headers["WWW-Authenticate"]
    refused(call(token(rsa_key, iss="https://other.test/")), "Bearer")
    refused(call(token(rsa_key, aud="someone-else")), "Bearer")
    refused(call(token(rsa_key, nbf=int(time.time()) + 3600)), "Bearer")
    refused(call(token(rsa_key, exp=None)), "Bearer")
    refused(call(token(rsa.generate_private_key(public_exponent=65537, key_size=2048))), "Bearer")
    refused(call("not-a-jwt"), "Bearer")
    never_ran(appliance, name)

    ok = call(token(rsa_key, groups=["a", "b"]))
    assert ok.status_code == 200, ok.text
    jwt_ctx = ok.json()["authorizer"]["jwt"]
    assert jwt_ctx["scopes"] == ["read", "write"]
    assert jwt_ctx["claims"]["sub"] == "user-1" and jwt_ctx["claims"]["groups"] == "[a b]"
    assert jwt_ctx["claims"]["iss"] == "https://issuer.test/"


class _Jwks(http.server.BaseHTTPRequestHandler):
    document: dict = {}
    hits = 0

    def do_GET(self):  # noqa: N802 - the http.server interface
        type(self).hits += 1
        data = json.dumps(self.document).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def test_jwt_es256_from_a_jwks_url_fetched_once(appliance):
    key = ec.generate_private_key(ec.SECP256R1())
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
    _Jwks.document = {"keys": [{**jwk, "kid": "k1", "use": "sig", "alg": "ES256"}]}
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Jwks)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        jwks_url = f"http://127.0.0.1:{server.server_address[1]}/.well-known/jwks.json"
        deploy(appliance, "GET", "/jwks", auth={"type": "jwt", "issuer": "https://issuer.test/",
                                                "audience": "faas-api", "jwks_url": jwks_url})
        url = appliance.edge + "/jwks"
        for _ in range(3):
            ok = requests.get(url, headers={"Authorization": f"Bearer {token(key, 'ES256', kid='k1')}"}, timeout=30)
            assert ok.status_code == 200, ok.text
            assert ok.json()["authorizer"]["jwt"]["claims"]["aud"] == "faas-api"
        assert _Jwks.hits == 1
        other = ec.generate_private_key(ec.SECP256R1())
        refused(requests.get(url, headers={"Authorization": f"Bearer {token(other, 'ES256', kid='k1')}"}, timeout=10),
                "Bearer")
        # An unknown key id does not make the edge fetch the document again at once.
        refused(requests.get(url, headers={"Authorization": f"Bearer {token(other, 'ES256', kid='k2')}"}, timeout=10),
                "Bearer")
        assert _Jwks.hits == 1
    finally:
        server.shutdown()


def test_invalid_auth_and_cors_settings_are_refused_with_the_field(appliance):
    name = deploy(appliance, "GET", "/plain")
    cases = [({"auth": {"type": "password"}}, "auth.type"),
             ({"auth": {"type": "jwt", "audience": "a", "public_key": "x"}}, "auth.issuer"),
             ({"auth": {"type": "jwt", "issuer": "i", "audience": "a", "public_key": "-----BEGIN PUBLIC KEY-----"}},
              "auth.public_key"),
             ({"auth": {"type": "jwt", "issuer": "i", "audience": "a", "jwks_url": "file:///etc/passwd"}},
              "auth.jwks_url"),
             ({"cors": {"allow_origins": ["*"], "allow_credentials": True}}, "cors.allow_credentials"),
             ({"cors": {"allow_origins": ["not an origin"]}}, "cors.allow_origins"),
             ({"cors": {"allow_origins": ["https://a.example"], "max_age": -1}}, "cors.max_age")]
    for extra, field in cases:
        resp = appliance.http.post(f"{appliance.api_url}/v1/triggers", timeout=10,
                                   json={"function": name, "method": "POST", "path": "/bad", **extra})
        assert resp.status_code == 400, (extra, resp.text)
        assert (resp.json()["error"]["code"], resp.json()["error"]["field"]) == ("Request.Invalid", field)
    resp = appliance.http.post(f"{appliance.api_url}/v1/triggers/keys", json={"method": "GET", "path": "/plain"},
                               timeout=10)
    assert resp.status_code == 409 and resp.json()["error"]["code"] == "Resource.Conflict"


CORS = {"allow_origins": ["https://app.example", "https://*.tenant.example"], "allow_methods": ["GET", "POST"],
        "allow_headers": ["content-type", "authorization"], "expose_headers": ["x-request-id"], "max_age": 600,
        "allow_credentials": True}


def test_cors_preflight_and_actual_responses(appliance):
    deploy(appliance, "POST", "/cors", cors=CORS, auth={"type": "bearer"})
    key = appliance.api.create_trigger_key("POST", "/cors")["key"]
    url = appliance.edge + "/cors"

    def preflight(origin, method="POST", headers="content-type, authorization"):
        return requests.options(url, timeout=10, headers={"Origin": origin, "Access-Control-Request-Method": method,
                                                          "Access-Control-Request-Headers": headers})

    ok = preflight("https://app.example")   # no key needed: browsers send none with a preflight
    assert ok.status_code == 204, ok.text
    assert ok.headers["Access-Control-Allow-Origin"] == "https://app.example"
    assert ok.headers["Access-Control-Allow-Methods"] == "GET, POST"
    assert ok.headers["Access-Control-Allow-Headers"] == "content-type, authorization"
    assert ok.headers["Access-Control-Max-Age"] == "600"
    assert ok.headers["Access-Control-Allow-Credentials"] == "true"
    assert "Origin" in ok.headers["Vary"]
    assert preflight("https://eu.tenant.example").status_code == 204
    for bad in (preflight("https://evil.example"), preflight("https://app.example", method="DELETE"),
                preflight("https://app.example", headers="x-secret")):
        assert bad.status_code == 403, bad.text
        assert bad.json()["error"]["code"] == "Trigger.OriginForbidden"
        assert "Access-Control-Allow-Origin" not in bad.headers

    actual = requests.post(url, data="{}", timeout=30, headers={"Origin": "https://app.example",
                                                               "Authorization": f"Bearer {key}"})
    assert actual.status_code == 200, actual.text
    assert actual.headers["Access-Control-Allow-Origin"] == "https://app.example"   # not the function's own
    assert actual.headers["Access-Control-Expose-Headers"] == "x-request-id"
    assert actual.headers["Access-Control-Allow-Credentials"] == "true"
    assert "Origin" in actual.headers["Vary"]
    # A refusal carries the CORS headers too, so the page can read why.
    denied = requests.post(url, data="{}", timeout=10, headers={"Origin": "https://app.example"})
    assert denied.status_code == 401 and denied.headers["Access-Control-Allow-Origin"] == "https://app.example"
    foreign = requests.post(url, data="{}", timeout=30, headers={"Origin": "https://evil.example",
                                                                "Authorization": f"Bearer {key}"})
    assert foreign.status_code == 200 and "Access-Control-Allow-Origin" not in foreign.headers


def test_cli_trigger_auth_and_keys(appliance):
    name = f"auth-{uuid.uuid4().hex[:8]}"
    appliance.api.create_function(name=name)
    appliance.api.upload_code(name, make_zip({"index.py": ECHO}))
    out = faas(appliance, "trigger", "add", name, "GET", "/cli-auth", "--auth", "bearer",
               "--cors-origin", "https://app.example")
    assert out.stdout.strip() == f"GET /cli-auth -> {name} (auth: bearer, cors)  {appliance.edge}/cli-auth"
    created = faas(appliance, "trigger", "key", "create", "GET", "/cli-auth", "--name", "laptop")
    key = created.stdout.strip()
    assert key.startswith("fk_") and "shown only now" in created.stderr
    assert requests.get(appliance.edge + "/cli-auth", headers={"Authorization": f"Bearer {key}"},
                        timeout=30).status_code == 200
    listed = faas(appliance, "trigger", "key", "ls", "GET", "/cli-auth").stdout
    assert "laptop" in listed and key not in listed
    assert "bearer cors" in faas(appliance, "trigger", "ls", name).stdout
    faas(appliance, "trigger", "key", "revoke", "GET", "/cli-auth", "laptop")
    refused(requests.get(appliance.edge + "/cli-auth", headers={"Authorization": f"Bearer {key}"}, timeout=10),
            "Bearer")
    bad = faas(appliance, "trigger", "add", name, "GET", "/cli-bad", "--issuer", "x", check=False)
    assert bad.returncode == 1 and "for --auth jwt" in bad.stderr
