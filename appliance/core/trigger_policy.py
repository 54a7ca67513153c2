"""A trigger's authentication and CORS settings: validation and the pure decisions. No IO.

An HTTP trigger may require its callers to authenticate (``auth``) and may let browsers on other
origins call it (``cors``). Both are set in the trigger's body (``POST /v1/triggers``), checked
here once when the trigger is stored, and applied by the edge (:mod:`appliance.edge.trigger_auth`)
before anything reaches the function. What can be decided without a clock, a network or a key
store (is this origin allowed, what does a preflight answer, is this HMAC signature the one we
expect and is its timestamp in the window) is decided here, as functions of their inputs and
``now``, so the unit tests exercise every branch without a server.

Auth types, as API Gateway and webhook senders do them:

- ``none``: anyone may call (the default).
- ``bearer``: ``Authorization: Bearer <key>``; keys are made by the API, shown once, and stored as
  SHA-256 hashes only.
- ``hmac``: the caller signs ``"<timestamp>.<body>"`` with a secret made by the API (Stripe's and
  GitHub's webhook scheme), sends ``X-Faas-Timestamp: <unix seconds>`` and
  ``X-Faas-Signature: sha256=<hex>``; a timestamp more than ``window_s`` (300) away from now is
  refused, and so is a signature seen before within its window (replay).
- ``jwt``: ``Authorization: Bearer <JWT>`` signed RS256 or ES256, verified with a PEM public key or
  a JWKS document (inline or fetched from a URL), issuer and audience checked, ``exp`` required,
  ``exp``/``nbf`` with ``leeway_s`` of clock skew.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from appliance.core.errors import ValidationError

AUTH_TYPES = ("none", "bearer", "hmac", "jwt")
JWT_ALGORITHMS = ("RS256", "ES256")
HMAC_WINDOW_S = 300
TIMESTAMP_HEADER = "x-faas-timestamp"
SIGNATURE_HEADER = "x-faas-signature"
SIGNATURE_PREFIX = "sha256="
#: Keys (bearer) or secrets (hmac) a trigger may hold at once: enough to rotate, few enough that a
#: request checks every one of them in constant time.
MAX_KEYS = 10
KEY_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,39}$")
MAX_PEM = 16 << 10
MAX_JWKS_INLINE = 64 << 10
MAX_LIST = 50
MAX_ITEM = 256
MAX_CORS_AGE = 86400
LEEWAY_S = (0, 300)
CORS_FIELDS = ("allow_origins", "allow_methods", "allow_headers", "expose_headers", "max_age", "allow_credentials")
CORS_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "*")
HEADER_NAME_RE = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")


# -- auth settings ---------------------------------------------------------------------------


def validate_auth(data) -> dict | None:
    """The normalised ``auth`` object of a trigger, or None for ``none``; a clear error otherwise."""
    if data is None:
        return None
    if isinstance(data, str):
        data = {"type": data}
    if not isinstance(data, dict):
        raise ValidationError('auth must be an object such as {"type": "bearer"}', field="auth")
    kind = data.get("type", "none")
    if kind not in AUTH_TYPES:
        raise ValidationError(f"auth.type must be one of {', '.join(AUTH_TYPES)}; got {kind!r}", field="auth.type")
    known = {"none": {"type"}, "bearer": {"type"}, "hmac": {"type"},
             "jwt": {"type", "issuer", "audience", "public_key", "jwks", "jwks_url", "algorithms", "leeway_s"}}[kind]
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValidationError(f"auth field {unknown[0]!r} is not known for type {kind!r}; known: "
                              f"{', '.join(sorted(known))}", field=f"auth.{unknown[0]}")
    if kind == "none":
        return None
    if kind in ("bearer", "hmac"):
        return {"type": kind}
    return _validate_jwt(data)


def _validate_jwt(data: dict) -> dict:
    issuer = data.get("issuer")
    if not isinstance(issuer, str) or not issuer or len(issuer) > MAX_ITEM:
        raise ValidationError("auth.issuer is required for jwt: the token's expected iss claim, for example "
                              "\"https://login.example.com/\"", field="auth.issuer")
    audience = data.get("audience")
    if isinstance(audience, str):
        audience = [audience]
    if (not isinstance(audience, list) or not audience or len(audience) > MAX_LIST
            or not all(isinstance(a, str) and a and len(a) <= MAX_ITEM for a in audience)):
        raise ValidationError("auth.audience is required for jwt: a string or a list of accepted aud values",
                              field="auth.audience")
    sources = [k for k in ("public_key", "jwks", "jwks_url") if data.get(k) is not None]
    if len(sources) != 1:
        raise ValidationError("give exactly one of auth.public_key (a PEM public key), auth.jwks (a JWKS document) "
                              "or auth.jwks_url (where the JWKS document is served)", field="auth.public_key")
    algorithms = data.get("algorithms", list(JWT_ALGORITHMS))
    if (not isinstance(algorithms, list) or not algorithms
            or not all(a in JWT_ALGORITHMS for a in algorithms)):
        raise ValidationError(f"auth.algorithms must be a non-empty list of {', '.join(JWT_ALGORITHMS)}; "
                              f"got {algorithms!r}", field="auth.algorithms")
    leeway = data.get("leeway_s", 30)
    if isinstance(leeway, bool) or not isinstance(leeway, int) or not LEEWAY_S[0] <= leeway <= LEEWAY_S[1]:
        raise ValidationError(f"auth.leeway_s must be an integer from {LEEWAY_S[0]} to {LEEWAY_S[1]}",
                              field="auth.leeway_s")
    out = {"type": "jwt", "issuer": issuer, "audience": list(audience), "algorithms": list(dict.fromkeys(algorithms)),
           "leeway_s": leeway}
    source = sources[0]
    value = data[source]
    if source == "public_key":
        if not isinstance(value, str) or len(value) > MAX_PEM or not _pem_key_ok(value):
            raise ValidationError("auth.public_key must be an RSA or EC public key in PEM "
                                  "(-----BEGIN PUBLIC KEY-----)", field="auth.public_key")
    elif source == "jwks":
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError:
                raise ValidationError("auth.jwks must be a JWKS document (JSON with a keys list)",
                                      field="auth.jwks") from None
        if (not isinstance(value, dict) or not isinstance(value.get("keys"), list) or not value["keys"]
                or len(json.dumps(value)) > MAX_JWKS_INLINE):
            raise ValidationError(f"auth.jwks must be a JWKS document with a non-empty keys list, at most "
                                  f"{MAX_JWKS_INLINE} bytes", field="auth.jwks")
        if not _jwks_usable(value):
            raise ValidationError("auth.jwks has no RSA or EC public key that can verify RS256 or ES256 tokens",
                                  field="auth.jwks")
    else:
        parts = urlsplit(value) if isinstance(value, str) else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.netloc or len(value) > 2048:
            raise ValidationError("auth.jwks_url must be an http(s) URL of a JWKS document", field="auth.jwks_url")
    out[source] = value
    return out


def _pem_key_ok(pem: str) -> bool:
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.hazmat.primitives.serialization import load_pem_public_key
    try:
        key = load_pem_public_key(pem.encode())
    except (ValueError, TypeError):
        return False
    return isinstance(key, (rsa.RSAPublicKey, ec.EllipticCurvePublicKey))


def _jwks_usable(document: dict) -> bool:
    import jwt
    for data in document["keys"]:
        try:
            jwt.PyJWK.from_dict(data)
            return True
        except (jwt.PyJWTError, TypeError, ValueError, KeyError):
            continue
    return False


def validate_key_name(name) -> str:
    if not isinstance(name, str) or not KEY_NAME_RE.match(name):
        raise ValidationError("a key name is 1-40 characters of lowercase letters, digits and '-', starting with a "
                              f"letter or digit; got {name!r}", field="name")
    return name


def hash_key(key: str) -> str:
    """How a bearer key is stored: its SHA-256, hex. Keys are 256 random bits, so no salt or
    stretching is needed: a hash cannot be turned back into a key by guessing."""
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()


def bearer_matches(presented: str, hashes: tuple[str, ...]) -> bool:
    """Whether ``presented`` is one of the keys stored as ``hashes``; every stored hash is
    compared, each in constant time, so the time taken says nothing about which nearly matched."""
    digest = hash_key(presented)
    ok = False
    for stored in hashes:
        ok |= hmac.compare_digest(digest, stored)
    return ok


def hmac_signature(secret: str, timestamp: str, body: bytes) -> str:
    """The ``X-Faas-Signature`` value of a request: ``sha256=`` and the hex HMAC-SHA256 of
    ``"<timestamp>.<body>"`` with the trigger's secret (the secret's UTF-8 bytes as the key)."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return SIGNATURE_PREFIX + mac.hexdigest()


def check_hmac(timestamp: str | None, signature: str | None, body: bytes, secrets: tuple[str, ...], now: float,
               window_s: int = HMAC_WINDOW_S) -> tuple[bool, str]:
    """(valid, why not) for a signed request, without the replay check (that needs memory: the
    edge's :class:`~appliance.edge.trigger_auth.ReplayGuard`). Every secret is tried in constant time."""
    if not timestamp or not signature:
        return False, f"sign the request: send {TIMESTAMP_HEADER} and {SIGNATURE_HEADER}"
    if not timestamp.isdigit() or len(timestamp) > 12:
        return False, f"{TIMESTAMP_HEADER} must be the Unix time in seconds"
    if abs(now - int(timestamp)) > window_s:
        return False, f"{TIMESTAMP_HEADER} is more than {window_s} seconds away from the server's time"
    ok = False
    for secret in secrets:
        ok |= hmac.compare_digest(hmac_signature(secret, timestamp, body), signature.strip().lower())
    return (True, "") if ok else (False, "the signature does not match")


def jwt_claims_for_event(claims: dict) -> dict:
    """``requestContext.authorizer.jwt`` as API Gateway's JWT authorizer gives it: every claim as a
    string (arrays as ``[a b]``, objects as JSON) and the scopes from ``scope`` or ``scp``."""
    out = {}
    for k, v in claims.items():
        if isinstance(v, str):
            out[k] = v
        elif isinstance(v, list):
            out[k] = "[" + " ".join(str(x) for x in v) + "]"
        elif isinstance(v, dict):
            out[k] = json.dumps(v, separators=(",", ":"))
        elif isinstance(v, bool):
            out[k] = "true" if v else "false"
        else:
            out[k] = str(v)
    raw = claims.get("scope", claims.get("scp"))
    scopes = raw.split() if isinstance(raw, str) else [str(s) for s in raw] if isinstance(raw, list) else None
    return {"claims": out, "scopes": scopes}


# -- CORS -------------------------------------------------------------------------------------


def _str_list(data: dict, name: str, *, check=None, upper=False) -> list[str]:
    value = data.get(name, [])
    if isinstance(value, str):
        value = [value]
    if (not isinstance(value, list) or len(value) > MAX_LIST
            or not all(isinstance(v, str) and v and len(v) <= MAX_ITEM for v in value)):
        raise ValidationError(f"cors.{name} must be a list of at most {MAX_LIST} strings", field=f"cors.{name}")
    out = [v.upper() if upper else v for v in value]
    for v in out:
        if check is not None and not check(v):
            raise ValidationError(f"cors.{name} has an invalid entry {v!r}", field=f"cors.{name}")
    return list(dict.fromkeys(out))


def _origin_ok(origin: str) -> bool:
    if origin == "*":
        return True
    parts = urlsplit(origin)
    host = parts.netloc.removeprefix("*.")
    return (parts.scheme in ("http", "https") and bool(host) and "*" not in host and not parts.path
            and not parts.query and not parts.fragment)


def validate_cors(data) -> dict | None:
    """The normalised ``cors`` object of a trigger, or None when browsers get no CORS headers."""
    if data is None:
        return None
    if not isinstance(data, dict):
        raise ValidationError('cors must be an object such as {"allow_origins": ["https://app.example.com"]}',
                              field="cors")
    unknown = sorted(set(data) - set(CORS_FIELDS))
    if unknown:
        raise ValidationError(f"cors field {unknown[0]!r} is not known; known: {', '.join(CORS_FIELDS)}",
                              field=f"cors.{unknown[0]}")
    origins = _str_list(data, "allow_origins", check=_origin_ok)
    if not origins:
        raise ValidationError("cors.allow_origins needs at least one origin (scheme://host[:port], "
                              "scheme://*.domain, or \"*\")", field="cors.allow_origins")
    methods = _str_list(data, "allow_methods", check=lambda m: m in CORS_METHODS, upper=True) or ["*"]
    headers = _str_list(data, "allow_headers", check=lambda h: h == "*" or bool(HEADER_NAME_RE.match(h)))
    expose = _str_list(data, "expose_headers", check=lambda h: h == "*" or bool(HEADER_NAME_RE.match(h)))
    max_age = data.get("max_age", 0)
    if isinstance(max_age, bool) or not isinstance(max_age, int) or not 0 <= max_age <= MAX_CORS_AGE:
        raise ValidationError(f"cors.max_age must be seconds from 0 to {MAX_CORS_AGE}", field="cors.max_age")
    credentials = data.get("allow_credentials", False)
    if not isinstance(credentials, bool):
        raise ValidationError("cors.allow_credentials must be true or false", field="cors.allow_credentials")
    if credentials and "*" in origins:
        raise ValidationError("cors.allow_credentials cannot be true with the origin \"*\" (browsers refuse it): "
                              "list the origins", field="cors.allow_credentials")
    return {"allow_origins": origins, "allow_methods": methods, "allow_headers": [h.lower() for h in headers],
            "expose_headers": expose, "max_age": max_age, "allow_credentials": credentials}


def origin_allowed(cors: dict, origin: str) -> bool:
    for allowed in cors["allow_origins"]:
        if allowed == "*" or allowed == origin:
            return True
        if "://*." in allowed:
            scheme, _, domain = allowed.partition("://*.")
            o = urlsplit(origin)
            if o.scheme == scheme and o.netloc.endswith("." + domain) and len(o.netloc) > len(domain) + 1:
                return True
    return False


@dataclass(frozen=True)
class Preflight:
    """A preflight's answer: the status (204, or 403 with ``reason``) and its headers."""

    status: int
    headers: tuple[tuple[str, str], ...]
    reason: str = ""


def preflight(cors: dict, origin: str, method: str, request_headers: str) -> Preflight:
    """The answer to ``OPTIONS`` with ``Access-Control-Request-Method``, as API Gateway gives it."""
    vary = (("vary", "Origin, Access-Control-Request-Method, Access-Control-Request-Headers"),)
    if not origin or not origin_allowed(cors, origin):
        return Preflight(403, vary, f"the origin {origin!r} is not allowed to call this trigger")
    method = method.upper()
    if "*" not in cors["allow_methods"] and method not in cors["allow_methods"]:
        return Preflight(403, vary, f"the method {method} is not allowed by this trigger's CORS settings")
    asked = [h.strip().lower() for h in request_headers.split(",") if h.strip()]
    if "*" not in cors["allow_headers"]:
        refused = [h for h in asked if h not in cors["allow_headers"]]
        if refused:
            return Preflight(403, vary, f"the header {refused[0]} is not allowed by this trigger's CORS settings")
    headers = [("access-control-allow-origin", _allow_origin(cors, origin)),
               ("access-control-allow-methods", method if "*" in cors["allow_methods"] else
                ", ".join(cors["allow_methods"]))]
    if asked:
        headers.append(("access-control-allow-headers", ", ".join(asked) if "*" in cors["allow_headers"] else
                        ", ".join(cors["allow_headers"])))
    if cors["max_age"]:
        headers.append(("access-control-max-age", str(cors["max_age"])))
    if cors["allow_credentials"]:
        headers.append(("access-control-allow-credentials", "true"))
    return Preflight(204, (*headers, *vary))


def _allow_origin(cors: dict, origin: str) -> str:
    # "*" only when any origin may call without credentials; otherwise the origin itself (+ Vary).
    return "*" if cors["allow_origins"] == ["*"] and not cors["allow_credentials"] else origin


def response_headers(cors: dict, origin: str | None) -> list[tuple[str, str]]:
    """The CORS headers added to an actual response (the function's, or the edge's error)."""
    if not origin or not origin_allowed(cors, origin):
        return [("vary", "Origin")]
    out = [("access-control-allow-origin", _allow_origin(cors, origin)), ("vary", "Origin")]
    if cors["allow_credentials"]:
        out.append(("access-control-allow-credentials", "true"))
    if cors["expose_headers"]:
        out.append(("access-control-expose-headers", ", ".join(cors["expose_headers"])))
    return out
