"""API tokens: who may call the control API, and for what.

A token is 256 random bits shown once, when it is made; the metadata store keeps only its SHA-256,
so a copy of the store (a backup, a Consul snapshot) gives nobody access. Cluster control planes
share tokens through the same store (Consul KV), so a token made on one works on all.

Scopes, from most to least power:

- ``admin``: everything, tokens included;
- ``deploy``: create, update, delete and upload functions, bind triggers, invoke, read;
- ``invoke``: invoke, and read invocation records and logs;
- ``read``: read everything but change nothing.

``deploy`` and ``invoke`` may be limited to functions whose name matches a glob (``shop-*``).

The decision itself (:func:`allows`) is pure, takes ``now``, and is what the API asks on every
request; :class:`TokenStore` holds the tokens and caches them for a moment, so a request costs no
store read (a revoked or expired token stops working within ``cache_ttl_s``).
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import re
import secrets
import threading
import time
from dataclasses import dataclass

from appliance.core.errors import ApplianceError, Conflict, NotFound, RevisionConflict, ValidationError

SCOPES = ("admin", "deploy", "invoke", "read")
#: What each scope may do. Actions: ``read`` (settings, code, triggers, instances, usage),
#: ``records`` (invocation records and logs), ``invoke``, ``deploy`` (any change to functions and
#: triggers), ``admin`` (tokens).
ACTIONS = {
    "admin": frozenset({"read", "records", "invoke", "deploy", "admin"}),
    "deploy": frozenset({"read", "records", "invoke", "deploy"}),
    "invoke": frozenset({"records", "invoke"}),
    "read": frozenset({"read", "records"}),
}
#: Scopes a function-name pattern may narrow.
PATTERN_SCOPES = ("deploy", "invoke")
TOKEN_PREFIX = "faas_"
#: 32 bytes = 256 bits of randomness in every token.
TOKEN_BYTES = 32
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
PATTERN_RE = re.compile(r"^[a-z0-9*?\[\]!-]{1,64}$")
#: Tokens one appliance keeps at most (each request compares against every one).
MAX_TOKENS = 1000
DURATION_RE = re.compile(r"^(\d{1,6})([smhdw])$")
DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
KEY_PREFIX = "tokens/"
ADMIN_NAME = "admin"


class AuthRequired(ApplianceError):
    """No credential was given."""

    code = "Auth.Required"
    status = 401


class InvalidToken(AuthRequired):
    """A credential was given but is unknown, revoked or expired."""

    code = "Auth.InvalidToken"


class Forbidden(ApplianceError):
    """The credential is valid but its scope does not allow the call."""

    code = "Auth.Forbidden"
    status = 403


@dataclass(frozen=True)
class Token:
    name: str
    scope: str
    sha256: str
    functions: str | None = None
    created_at: float = 0.0
    expires_at: float | None = None
    created_by: str = ""

    def to_doc(self) -> dict:
        return {"name": self.name, "scope": self.scope, "sha256": self.sha256, "functions": self.functions,
                "created_at": self.created_at, "expires_at": self.expires_at, "created_by": self.created_by}

    @classmethod
    def from_doc(cls, doc: dict) -> Token:
        return cls(name=doc["name"], scope=doc["scope"], sha256=doc["sha256"], functions=doc.get("functions"),
                   created_at=doc.get("created_at", 0.0), expires_at=doc.get("expires_at"),
                   created_by=doc.get("created_by", ""))

    def to_api(self) -> dict:
        """What the API shows of a token: never its hash."""
        return {"name": self.name, "scope": self.scope, "functions": self.functions, "created_at": self.created_at,
                "expires_at": self.expires_at, "created_by": self.created_by}

    def expired(self, now: float) -> bool:
        return self.expires_at is not None and now >= self.expires_at


def new_secret() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(TOKEN_BYTES)


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogateescape")).hexdigest()


def parse_duration(raw: str) -> int:
    """Seconds of ``30d``, ``12h``, ``90m``, ``3600s`` or ``2w``."""
    m = DURATION_RE.match(raw.strip()) if isinstance(raw, str) else None
    if not m or int(m.group(1)) == 0:
        raise ValidationError(f"expires must be a positive duration such as 3600s, 90m, 12h, 30d or 2w; got {raw!r}",
                              field="expires")
    return int(m.group(1)) * DURATION_UNITS[m.group(2)]


def matches(pattern: str | None, function: str) -> bool:
    return pattern is None or fnmatch.fnmatchcase(function, pattern)


def allows(token: Token, action: str, function: str | None, now: float) -> bool:
    """Whether ``token`` may do ``action`` (to ``function``, when the call is about one)."""
    if token.expired(now) or action not in ACTIONS.get(token.scope, ()):
        return False
    return function is None or matches(token.functions, function)


def validate_request(data: dict, now: float) -> tuple[str, str, str | None, float | None]:
    """(name, scope, functions, expires_at) of a ``POST /v1/tokens`` body."""
    name, scope = data.get("name"), data.get("scope")
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ValidationError("name must be 1-63 characters of a-z, 0-9, '.', '_' and '-', starting with a letter "
                              f"or digit; got {name!r}", field="name")
    if scope not in SCOPES:
        raise ValidationError(f"scope must be one of {', '.join(SCOPES)}; got {scope!r}", field="scope")
    functions = data.get("functions")
    if functions is not None:
        if scope not in PATTERN_SCOPES:
            raise ValidationError(f"functions narrows only the {' and '.join(PATTERN_SCOPES)} scopes", field="functions")
        if not isinstance(functions, str) or not PATTERN_RE.match(functions):
            raise ValidationError("functions must be a function-name glob of a-z, 0-9, '-', '*', '?' and [...], "
                                  f"for example 'shop-*'; got {functions!r}", field="functions")
    expires = data.get("expires")
    expires_at = None
    if expires is not None:
        if isinstance(expires, (int, float)) and not isinstance(expires, bool):
            if expires <= 0:
                raise ValidationError("expires must be a positive number of seconds", field="expires")
            expires_at = now + float(expires)
        else:
            expires_at = now + parse_duration(expires)
    unknown = sorted(set(data) - {"name", "scope", "functions", "expires"})
    if unknown:
        raise ValidationError(f"unknown field {unknown[0]!r}; known fields are name, scope, functions, expires",
                              field=unknown[0])
    return name, scope, functions, expires_at


class TokenStore:
    """Tokens in the metadata store under ``tokens/<name>``, looked up by constant-time comparison
    of hashes against a list kept for ``cache_ttl_s`` seconds."""

    def __init__(self, meta, *, cache_ttl_s: float = 1.0, clock=time.monotonic):
        self.meta = meta
        self._ttl = cache_ttl_s
        self._clock = clock
        self._lock = threading.Lock()
        self._cached: tuple[float, list[Token]] | None = None

    def list(self, *, fresh: bool = False) -> list[Token]:
        now = self._clock()
        with self._lock:
            cached = self._cached
        if cached and not fresh and now - cached[0] < self._ttl:
            return cached[1]
        tokens = [Token.from_doc(doc) for _, doc, _ in self.meta.list(KEY_PREFIX)]
        with self._lock:
            self._cached = (now, tokens)
        return tokens

    def _forget(self) -> None:
        with self._lock:
            self._cached = None

    def authenticate(self, secret: str) -> Token | None:
        """The token whose hash matches ``secret``, or None. Every stored hash is compared, each in
        constant time, so timing says nothing about how close a guess came."""
        presented = digest(secret)
        found = None
        for token in self.list():
            if hmac.compare_digest(token.sha256, presented):
                found = token
        return found

    def create(self, name: str, scope: str, *, functions: str | None = None, expires_at: float | None = None,
               created_by: str = "", secret: str | None = None, now: float | None = None) -> tuple[Token, str]:
        """A new token and its secret (the only time the secret exists outside the caller)."""
        if len(self.list(fresh=True)) >= MAX_TOKENS:
            raise Conflict(f"there are already {MAX_TOKENS} tokens; revoke unused ones first")
        secret = secret or new_secret()
        token = Token(name=name, scope=scope, sha256=digest(secret), functions=functions,
                      created_at=time.time() if now is None else now, expires_at=expires_at, created_by=created_by)
        try:
            self.meta.put(KEY_PREFIX + name, token.to_doc(), expected_revision=0)
        except RevisionConflict:
            raise Conflict(f"a token named {name!r} already exists; revoke it first or pick another name",
                           field="name") from None
        self._forget()
        return token, secret

    def put_hash(self, name: str, scope: str, sha256: str, *, created_by: str) -> bool:
        """Make ``name`` a token of ``scope`` with this hash (seeding from settings); True when changed."""
        got = self.meta.get(KEY_PREFIX + name)
        if got and got[0].get("sha256") == sha256 and got[0].get("scope") == scope:
            return False
        token = Token(name=name, scope=scope, sha256=sha256, created_at=time.time(), created_by=created_by)
        self.meta.put(KEY_PREFIX + name, token.to_doc())
        self._forget()
        return True

    def revoke(self, name: str) -> Token:
        got = self.meta.get(KEY_PREFIX + name) if isinstance(name, str) and NAME_RE.match(name) else None
        if not got:
            raise NotFound(f"there is no token named {name!r}; `faas token ls` lists them")
        self.meta.delete(KEY_PREFIX + name)
        self._forget()
        return Token.from_doc(got[0])

    def has_admin(self, now: float) -> bool:
        return any(t.scope == "admin" and not t.expired(now) for t in self.list(fresh=True))
