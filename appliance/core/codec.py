"""JSON and request ids on the request path, cheap enough to pay on every warm request.

The edge encodes an event and decodes a reply for every invocation; with the standard library's
encoder and decoder that was about a tenth of the warm path's CPU. orjson does both in C. This
module has no Flask or other heavy import, so the instance clients can use it too.
"""

from __future__ import annotations

import json
import random
import time

import orjson


def new_request_id() -> str:
    """32 hex digits, time-ordered as in UUIDv7: 48 bits of Unix milliseconds, then 80 random bits.

    The invocation records index request ids. Random ids put every insert on a random page of
    that index, so each batch rewrote pages all over it: the records writer, which shares the
    edge's GIL, cost 20 us per invocation with 100,000 kept, against 10 us with ids that grow
    (bench figures in bench/results/findings.md). The random part need not be a secret (ids are
    echoed in responses and logs), so it comes from ``random``: ``uuid.uuid4`` and ``os.urandom``
    make a system call per id.
    """
    return f"{time.time_ns() // 1_000_000:012x}{random.getrandbits(80):020x}"


def dumps_compact(body) -> bytes:
    """Compact JSON as bytes, by orjson: the edge encodes an event for every invocation, and the
    standard encoder took about a tenth of the warm path's CPU. Values orjson refuses (integers
    past 64 bits, non-string keys) fall back to the standard encoder, so nothing encodable fails."""
    try:
        return orjson.dumps(body)
    except TypeError:
        return json.dumps(body, separators=(",", ":")).encode()


def loads(data: bytes):
    """JSON from bytes, by orjson, falling back to the standard decoder for what orjson refuses
    but Python's ``json.dumps`` writes (integers past 64 bits, NaN and Infinity)."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data)
