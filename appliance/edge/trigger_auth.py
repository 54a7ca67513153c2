"""The edge's check of a trigger's authentication, before anything reaches the function.

The edge's trigger path (:mod:`.trigger_path`) asks :class:`TriggerGuard` for the verifier of a
matched trigger and calls it on the event loop: a trigger with ``auth: none`` has no verifier and
costs one attribute test. Verifiers are built once per trigger (its settings and keys) and cached,
so a request pays for what its auth type needs and nothing else: a SHA-256 and a constant-time
compare per key (bearer), an HMAC per secret and a look-up in the replay memory (hmac), a signature
check with an already-parsed public key (jwt). Only a JWKS document that must be fetched (first use,
expiry, a key id not seen before) leaves the loop: the fetch runs on the edge's threads, with a
timeout and a size limit, and unknown key ids refetch at most once per ``JWKS_REFETCH_S`` so a
caller cannot make the edge fetch on every request.

A failure raises :class:`~appliance.core.errors.TriggerUnauthorized` (401 ``Trigger.Unauthorized``
with ``WWW-Authenticate``); the invocation is never made, so no instance is started for it.
"""

from __future__ import annotations

import heapq
import json
import threading
import time
import urllib.request

import jwt
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from jwt.exceptions import (
    ExpiredSignatureError,
    ImmatureSignatureError,
    InvalidAudienceError,
    InvalidIssuerError,
    InvalidSignatureError,
    MissingRequiredClaimError,
    PyJWTError,
)

from appliance.core import trigger_policy as policy
from appliance.core.errors import ReplayGuardFull, TriggerUnauthorized

REALM = 'realm="faas"'
#: Signatures remembered at once, across the edge's triggers (each until its window ends).
REPLAY_CAP = 100_000
JWKS_TTL_S = 300.0
JWKS_REFETCH_S = 30.0
JWKS_TIMEOUT_S = 5.0
JWKS_MAX_BYTES = 256 << 10
#: Verifiers kept (one per trigger and set of keys); past it the cache starts over.
CACHE_CAP = 4096
#: Tokens a JWT verifier remembers as verified (a client sends the same token until it expires,
#: and a signature check costs far more than the rest of a warm request); past it, it starts over.
TOKEN_CACHE_CAP = 1024


class ReplayGuard:
    """Signatures seen within their window, so each is accepted once. Memory is bounded: an entry
    is dropped when its window ends, and at ``cap`` live entries new signatures are refused
    (``Trigger.ReplayGuardFull``, retryable) rather than an old one forgotten and made replayable."""

    def __init__(self, cap: int = REPLAY_CAP):
        self.cap = cap
        self._expiry: dict[str, float] = {}
        self._heap: list[tuple[float, str]] = []
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._expiry)

    def first_use(self, signature: str, expires_at: float, now: float) -> bool:
        """True the first time ``signature`` is seen before ``expires_at``; False for a replay."""
        with self._lock:
            heap, expiry = self._heap, self._expiry
            while heap and heap[0][0] <= now:
                _, old = heapq.heappop(heap)
                if expiry.get(old, now + 1) <= now:
                    del expiry[old]
            if signature in expiry:
                return False
            if len(expiry) >= self.cap:
                raise ReplayGuardFull("the edge remembers as many recent signatures as it may; try again shortly")
            expiry[signature] = expires_at
            heapq.heappush(heap, (expires_at, signature))
            return True


def _challenge(scheme: str, error: str | None = None, description: str | None = None) -> str:
    out = f"{scheme} {REALM}"
    if error:
        out += f', error="{error}"'
    if description:
        out += ', error_description="' + description.replace('"', "'") + '"'
    return out


def _bearer_token(headers) -> str | None:
    raw = headers.get("authorization") or ""
    scheme, _, token = raw.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


class BearerVerifier:
    needs_body = False

    def __init__(self, hashes: tuple[str, ...]):
        self.hashes = hashes

    def check(self, headers, body: bytes, now: float):
        token = _bearer_token(headers)
        if token is None:
            raise TriggerUnauthorized("this trigger needs a key: send Authorization: Bearer <key>",
                                      challenge=_challenge("Bearer"))
        if not policy.bearer_matches(token, self.hashes):
            raise TriggerUnauthorized("the key is not valid for this trigger",
                                      challenge=_challenge("Bearer", "invalid_token", "the key is not valid"))
        return None


class HmacVerifier:
    needs_body = True
    CHALLENGE = f'FaasSignature {REALM}, headers="{policy.TIMESTAMP_HEADER} {policy.SIGNATURE_HEADER}"'

    def __init__(self, secrets: tuple[str, ...], replays: ReplayGuard, window_s: int = policy.HMAC_WINDOW_S):
        self.secrets, self.replays, self.window_s = secrets, replays, window_s

    def check(self, headers, body: bytes, now: float):
        timestamp = headers.get(policy.TIMESTAMP_HEADER)
        signature = headers.get(policy.SIGNATURE_HEADER)
        ok, why = policy.check_hmac(timestamp, signature, body, self.secrets, now, self.window_s)
        if not ok:
            raise TriggerUnauthorized(why, challenge=self.CHALLENGE)
        if not self.replays.first_use(signature.strip().lower(), int(timestamp) + self.window_s, now):
            raise TriggerUnauthorized("this signature was already used: sign each request anew",
                                      challenge=self.CHALLENGE)
        return None


_JWT_REASONS = (
    (ExpiredSignatureError, "the token has expired"),
    (ImmatureSignatureError, "the token is not valid yet"),
    (InvalidAudienceError, "the token's audience is not accepted"),
    (InvalidIssuerError, "the token's issuer is not accepted"),
    (InvalidSignatureError, "the token's signature does not verify"),
    (MissingRequiredClaimError, "the token lacks a required claim (exp, iss, aud)"),
)


def _jwt_refused(reason: str) -> TriggerUnauthorized:
    return TriggerUnauthorized(reason, challenge=_challenge("Bearer", "invalid_token", reason))


class JwtVerifier:
    """RS256/ES256 tokens against a PEM key or a JWKS document (inline or from a URL)."""

    needs_body = False

    def __init__(self, auth: dict, *, fetch=None):
        self.issuer = auth["issuer"]
        self.audience = auth["audience"]
        self.algorithms = auth["algorithms"]
        self.leeway = auth["leeway_s"]
        self.url = auth.get("jwks_url")
        self._fetch = fetch or fetch_jwks
        self._pem = None
        self._by_kid: dict[str | None, object] = {}
        self._fetched_at = float("-inf")
        self._attempted_at = float("-inf")
        self._lock = threading.Lock()
        #: token -> (what the event gets, exp, nbf): the token's signature, issuer and audience were
        #: checked once; only its time window is checked again on the next use.
        self._verified: dict[str, tuple[dict, float, float]] = {}
        if auth.get("public_key"):
            self._pem = load_pem_public_key(auth["public_key"].encode())
        elif auth.get("jwks"):
            self._load(auth["jwks"])
            self._fetched_at = float("inf")

    def _load(self, document: dict) -> None:
        keys: dict[str | None, object] = {}
        for data in document.get("keys", []):
            try:
                k = jwt.PyJWK.from_dict(data)
            except (PyJWTError, TypeError, ValueError, KeyError):
                continue  # a key of a type or algorithm we do not take: skip it, as JWKS users do
            keys[k.key_id] = k.key
        if len(keys) == 1:
            keys.setdefault(None, next(iter(keys.values())))
        self._by_kid = keys

    def needs_fetch(self, headers, now: float) -> bool:
        """Whether a check now would have to fetch the JWKS document first (do that off the loop)."""
        if self.url is None:
            return False
        if now - self._fetched_at < JWKS_TTL_S:
            kid = self._kid(headers)
            return kid not in self._by_kid and now - self._attempted_at >= JWKS_REFETCH_S
        return now - self._attempted_at >= JWKS_REFETCH_S

    def refresh(self, now: float) -> None:
        """Fetch the JWKS document (blocking: call it on a thread)."""
        with self._lock:
            if now - self._attempted_at < JWKS_REFETCH_S:
                return  # another request fetched (or failed to) just now: no second fetch
            self._attempted_at = now
            try:
                self._load(self._fetch(self.url))
                self._fetched_at = now
            except (OSError, ValueError):
                pass  # the check then says the key was not found; the next attempt waits JWKS_REFETCH_S

    @staticmethod
    def _kid(headers):
        token = _bearer_token(headers)
        try:
            return jwt.get_unverified_header(token).get("kid") if token else None
        except PyJWTError:
            return None

    def check(self, headers, body: bytes, now: float) -> dict:
        token = _bearer_token(headers)
        if token is None:
            raise TriggerUnauthorized("this trigger needs a token: send Authorization: Bearer <JWT>",
                                      challenge=_challenge("Bearer"))
        hit = self._verified.get(token)
        if hit is not None:
            authorizer, exp, nbf = hit
            if now > exp + self.leeway:
                self._verified.pop(token, None)
                raise _jwt_refused("the token has expired")
            if now < nbf - self.leeway:
                raise _jwt_refused("the token is not valid yet")
            return authorizer
        try:
            header = jwt.get_unverified_header(token)
        except PyJWTError:
            raise _jwt_refused("the bearer token is not a JWT") from None
        if header.get("alg") not in self.algorithms:
            raise _jwt_refused(f"the token's algorithm must be one of {', '.join(self.algorithms)}")
        key = self._pem
        if key is None:
            key = self._by_kid.get(header.get("kid"))
            if key is None:
                raise _jwt_refused("the token's signing key is not among the trigger's keys")
        try:
            claims = jwt.decode(token, key, algorithms=self.algorithms, audience=self.audience, issuer=self.issuer,
                                leeway=self.leeway, options={"require": ["exp", "iss", "aud"]})
        except PyJWTError as exc:
            reason = next((r for cls, r in _JWT_REASONS if isinstance(exc, cls)), "the token is not valid")
            raise _jwt_refused(reason) from None
        authorizer = {"jwt": policy.jwt_claims_for_event(claims)}
        if self.url is None:  # keys from a URL may be rotated away: those tokens are checked every time
            if len(self._verified) >= TOKEN_CACHE_CAP:
                self._verified.clear()
            nbf = claims.get("nbf")
            self._verified[token] = (authorizer, float(claims["exp"]),
                                     float(nbf) if isinstance(nbf, (int, float)) else float("-inf"))
        return authorizer


def fetch_jwks(url: str) -> dict:
    """The JWKS document at ``url``: a timeout, a size limit, JSON with a keys list."""
    req = urllib.request.Request(url, headers={"Accept": "application/json", "User-Agent": "faas-appliance-edge"})
    with urllib.request.urlopen(req, timeout=JWKS_TIMEOUT_S) as resp:  # noqa: S310 - an operator-set http(s) URL
        data = resp.read(JWKS_MAX_BYTES + 1)
    if len(data) > JWKS_MAX_BYTES:
        raise ValueError("the JWKS document is too large")
    doc = json.loads(data)
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise ValueError("not a JWKS document")
    return doc


class TriggerGuard:
    """Verifiers per trigger, built on first use and kept while the trigger and its keys stay the
    same (a trigger's auth cannot change without making it anew, which changes ``created_at``)."""

    def __init__(self, *, replays: ReplayGuard | None = None, clock=time.time, fetch=None):
        self.replays = replays or ReplayGuard()
        self.clock = clock
        self._fetch = fetch
        self._verifiers: dict[tuple, object] = {}

    def verifier(self, trigger):
        """The trigger's verifier, or None when anyone may call it."""
        auth = trigger.auth
        if auth is None:
            return None
        ident = (trigger.method, trigger.path, trigger.created_at, trigger.keys)
        v = self._verifiers.get(ident)
        if v is None:
            if len(self._verifiers) >= CACHE_CAP:
                self._verifiers.clear()
            v = self._verifiers[ident] = self._build(auth, trigger.keys)
        return v

    def _build(self, auth: dict, keys: tuple[str, ...]):
        kind = auth["type"]
        if kind == "bearer":
            return BearerVerifier(keys)
        if kind == "hmac":
            return HmacVerifier(keys, self.replays)
        return JwtVerifier(auth, fetch=self._fetch)
