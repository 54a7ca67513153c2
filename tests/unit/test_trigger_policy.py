"""The pure parts of trigger auth and CORS: settings validation, HMAC, replay memory, CORS answers."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from appliance.core import trigger_policy as p
from appliance.core.errors import ReplayGuardFull, TriggerUnauthorized, ValidationError
from appliance.core.model import Trigger
from appliance.edge.trigger_auth import BearerVerifier, HmacVerifier, ReplayGuard, TriggerGuard


def test_auth_defaults_to_none_and_keeps_only_known_fields():
    assert p.validate_auth(None) is None
    assert p.validate_auth({"type": "none"}) is None
    assert p.validate_auth("bearer") == {"type": "bearer"}
    with pytest.raises(ValidationError) as err:
        p.validate_auth({"type": "bearer", "issuer": "x"})
    assert err.value.field == "auth.issuer"
    with pytest.raises(ValidationError):
        p.validate_auth({"type": "jwt", "issuer": "i", "audience": "a", "jwks_url": "https://x/j",
                         "public_key": "k"})  # two key sources


def test_jwt_settings_are_normalised():
    got = p.validate_auth({"type": "jwt", "issuer": "https://i/", "audience": "api",
                           "jwks_url": "https://login.example/jwks.json"})
    assert got == {"type": "jwt", "issuer": "https://i/", "audience": ["api"], "algorithms": ["RS256", "ES256"],
                   "leeway_s": 30, "jwks_url": "https://login.example/jwks.json"}
    with pytest.raises(ValidationError) as err:
        p.validate_auth({"type": "jwt", "issuer": "i", "audience": "a", "jwks_url": "https://x/",
                         "algorithms": ["HS256"]})
    assert err.value.field == "auth.algorithms"


def test_hmac_signature_is_the_documented_format():
    expected = hmac.new(b"s3cret", b"1700000000.hello", hashlib.sha256).hexdigest()
    assert p.hmac_signature("s3cret", "1700000000", b"hello") == "sha256=" + expected


@pytest.mark.parametrize("ts, sig, ok", [
    ("1000", p.hmac_signature("k", "1000", b"b"), True),
    ("1000", p.hmac_signature("k", "1000", b"B"), False),
    ("700", p.hmac_signature("k", "700", b"b"), True),       # exactly 300 s old
    ("699", p.hmac_signature("k", "699", b"b"), False),
    ("1301", p.hmac_signature("k", "1301", b"b"), False),
    ("1e3", "sha256=00", False),
    (None, None, False),
])
def test_check_hmac_window_and_signature(ts, sig, ok):
    assert p.check_hmac(ts, sig, b"b", ("other", "k"), now=1000)[0] is ok


def test_bearer_matches_any_stored_hash_only():
    hashes = (p.hash_key("fk_a"), p.hash_key("fk_b"))
    assert p.bearer_matches("fk_b", hashes) and not p.bearer_matches("fk_c", hashes)
    assert not p.bearer_matches("fk_a", ())


def test_replay_guard_refuses_a_replay_and_forgets_after_the_window():
    g = ReplayGuard(cap=2)
    assert g.first_use("a", expires_at=10, now=0)
    assert not g.first_use("a", expires_at=10, now=5)
    assert g.first_use("b", expires_at=20, now=5)
    with pytest.raises(ReplayGuardFull):
        g.first_use("c", expires_at=20, now=6)        # full: refuses rather than forgets
    assert g.first_use("c", expires_at=30, now=10)    # "a"'s window ended: room again
    assert len(g) == 2


def test_hmac_verifier_refuses_replays():
    v = HmacVerifier(("k",), ReplayGuard())
    headers = {"x-faas-timestamp": "1000", "x-faas-signature": p.hmac_signature("k", "1000", b"x")}
    v.check(headers, b"x", now=1000)
    with pytest.raises(TriggerUnauthorized) as err:
        v.check(headers, b"x", now=1001)
    assert "already used" in err.value.message and err.value.challenge.startswith("FaasSignature")


def test_bearer_verifier_and_guard_cache():
    guard = TriggerGuard()
    t = Trigger("GET", "/x", "f", 1.0, auth={"type": "bearer"}, keys=(p.hash_key("fk_ok"),))
    assert guard.verifier(Trigger("GET", "/y", "f")) is None
    v = guard.verifier(t)
    assert isinstance(v, BearerVerifier) and guard.verifier(t) is v
    v.check({"authorization": "Bearer fk_ok"}, b"", 0)
    with pytest.raises(TriggerUnauthorized) as err:
        v.check({"authorization": "bearer fk_no"}, b"", 0)
    assert 'error="invalid_token"' in err.value.challenge
    # New keys make a new verifier.
    t2 = Trigger("GET", "/x", "f", 1.0, auth={"type": "bearer"}, keys=())
    assert guard.verifier(t2) is not v


CORS = p.validate_cors({"allow_origins": ["https://a.example", "https://*.b.example"], "allow_methods": ["get"],
                        "allow_headers": ["Content-Type"], "max_age": 60})


def test_cors_validation_normalises():
    assert CORS["allow_methods"] == ["GET"] and CORS["allow_headers"] == ["content-type"]
    assert p.validate_cors(None) is None
    with pytest.raises(ValidationError):
        p.validate_cors({"allow_origins": []})
    with pytest.raises(ValidationError):
        p.validate_cors({"allow_origins": ["https://a.example/path"]})


@pytest.mark.parametrize("origin, ok", [("https://a.example", True), ("https://x.b.example", True),
                                        ("https://b.example", False), ("http://a.example", False),
                                        ("https://evil.example", False), ("https://x.b.example.evil", False)])
def test_origin_matching(origin, ok):
    assert p.origin_allowed(CORS, origin) is ok


def test_preflight_answers():
    ok = p.preflight(CORS, "https://a.example", "GET", "content-type")
    assert ok.status == 204
    assert dict(ok.headers)["access-control-allow-origin"] == "https://a.example"
    assert dict(ok.headers)["access-control-max-age"] == "60"
    assert p.preflight(CORS, "https://a.example", "POST", "").status == 403
    assert p.preflight(CORS, "https://a.example", "GET", "x-other").status == 403
    assert p.preflight(CORS, "", "GET", "").status == 403
    star = p.validate_cors({"allow_origins": ["*"], "allow_headers": ["*"]})
    got = dict(p.preflight(star, "https://any.example", "DELETE", "X-A").headers)
    assert got["access-control-allow-origin"] == "*" and got["access-control-allow-headers"] == "x-a"


def test_actual_response_headers():
    assert dict(p.response_headers(CORS, "https://a.example"))["access-control-allow-origin"] == "https://a.example"
    assert p.response_headers(CORS, "https://evil.example") == [("vary", "Origin")]
    assert p.response_headers(CORS, None) == [("vary", "Origin")]


def test_jwt_claims_as_api_gateway_gives_them():
    got = p.jwt_claims_for_event({"sub": "u", "exp": 5, "groups": ["a", "b"], "scp": ["r", "w"], "admin": True})
    assert got == {"claims": {"sub": "u", "exp": "5", "groups": "[a b]", "scp": "[r w]", "admin": "true"},
                   "scopes": ["r", "w"]}
    assert p.jwt_claims_for_event({"sub": "u"})["scopes"] is None


def test_jwt_verifier_remembers_a_verified_token_only_within_its_window():
    import json

    import jwt
    from cryptography.hazmat.primitives.asymmetric import ec

    from appliance.edge.trigger_auth import JwtVerifier

    key = ec.generate_private_key(ec.SECP256R1())
    jwks = {"keys": [{**json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key())), "kid": "k"}]}
    auth = p.validate_auth({"type": "jwt", "issuer": "i", "audience": "a", "jwks": jwks, "leeway_s": 0})
    v = JwtVerifier(auth)
    import time
    now = time.time()
    tok = jwt.encode({"iss": "i", "aud": "a", "sub": "s", "exp": int(now) + 10}, key, algorithm="ES256",
                     headers={"kid": "k"})
    headers = {"authorization": f"Bearer {tok}"}
    first = v.check(headers, b"", now)
    assert first["jwt"]["claims"]["sub"] == "s"
    assert v.check(headers, b"", now + 5) is first          # remembered: no second signature check
    with pytest.raises(TriggerUnauthorized) as err:
        v.check(headers, b"", now + 3600)                   # past exp: refused, and forgotten
    assert "expired" in err.value.message
    with pytest.raises(TriggerUnauthorized):
        v.check({"authorization": f"Bearer {tok[:-4]}AAAA"}, b"", now)
