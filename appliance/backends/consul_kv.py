"""Function metadata in Consul KV: cluster mode's MetadataStore.

Every control plane reads and writes the same keys, so concurrent updates must never overwrite
each other silently. Consul gives each key a ``ModifyIndex`` that changes on every write; that is
the revision, and writes with an expected revision use Consul's check-and-set (``?cas=N``; ``0``
means "only if absent"). A lost race becomes :class:`RevisionConflict`, the same as in SQLite, and
the function store re-reads and retries or reports it.

Keys live under a prefix (``faas/meta/`` by default) so the store shares a Consul cluster with the
pool claims and anything else.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid

import consul
import requests

from appliance.core.errors import RegistryUnavailable, RevisionConflict

log = logging.getLogger("appliance.consul_kv")


#: Field of the stored JSON naming the write that produced it (stripped on read).
WRITE_TOKEN = "_write"


def _decode(value: bytes, *, keep_token: bool = False) -> dict:
    doc = json.loads(value)
    if isinstance(doc, dict) and not keep_token:
        doc.pop(WRITE_TOKEN, None)
    return doc


class MetadataUnavailable(RegistryUnavailable):
    code = "Metadata.Unavailable"


def consul_client(addr: str, token: str = "", timeout_s: float | None = None) -> consul.Consul:
    """A py-consul client for ``http(s)://host:port``.

    py-consul takes ``CONSUL_HTTP_TOKEN`` from the environment over the token it is given
    (consul/base.py: ``os.getenv("CONSUL_HTTP_TOKEN", token)``); the configured token wins here, and
    the environment's is used only when none is configured, as the consul CLI does."""
    import os
    from urllib.parse import urlparse

    u = urlparse(addr if "://" in addr else f"http://{addr}")
    c = consul.Consul(host=u.hostname or "127.0.0.1", port=u.port or (443 if u.scheme == "https" else 8500),
                      scheme=u.scheme or "http", token=token or None, connections_timeout=timeout_s)
    c.token = token or os.environ.get("CONSUL_HTTP_TOKEN") or None
    return c


class ConsulMetadataStore:
    """See the module docstring. Reads that fail because Consul does not answer are served from the
    last answer to the same read for up to ``stale_limit_s`` seconds of outage, so an edge keeps
    routing to warm instances through a Consul restart; writes always need Consul."""

    remote = True

    def __init__(self, addr: str, *, token: str = "", prefix: str = "faas/meta/", timeout_s: float = 10.0,
                 stale_limit_s: float = 60.0, clock=time.monotonic):
        self.addr = addr
        self.prefix = prefix if prefix.endswith("/") else prefix + "/"
        self.stale_limit_s = stale_limit_s
        self.clock = clock
        self._c = consul_client(addr, token, timeout_s)
        self._lock = threading.Lock()
        self._last: dict[tuple[str, str], object] = {}
        self._down_since: float | None = None

    def _k(self, key: str) -> str:
        return self.prefix + key.lstrip("/")

    def _down(self, exc: Exception) -> MetadataUnavailable:
        return MetadataUnavailable(f"Consul at {self.addr} did not answer a metadata request: {exc}")

    def _read(self, op: str, key: str, fn):
        try:
            value = fn()
        except (requests.RequestException, consul.ConsulException) as exc:
            now = self.clock()
            with self._lock:
                if self._down_since is None:
                    self._down_since = now
                    log.warning("event=metadata_unreachable address=%s error=%r", self.addr, str(exc)[:200])
                fresh_enough = now - self._down_since < self.stale_limit_s
                hit = (op, key) in self._last
                value = self._last.get((op, key))
            if fresh_enough and hit:
                log.info("event=metadata_stale_read op=%s key=%s", op, key)
                return value
            raise self._down(exc) from None
        with self._lock:
            self._down_since = None
            self._last[(op, key)] = value
        return value

    def get(self, key: str) -> tuple[dict, int] | None:
        _, item = self._read("get", key, lambda: self._c.kv.get(self._k(key)))
        if item is None or item.get("Value") is None:
            return None
        return _decode(item["Value"]), int(item["ModifyIndex"])

    def list(self, prefix: str) -> list[tuple[str, dict, int]]:
        _, items = self._read("list", prefix, lambda: self._c.kv.get(self._k(prefix), recurse=True))
        out = []
        for item in items or []:
            if item.get("Value") is None:
                continue
            out.append((item["Key"][len(self.prefix):], _decode(item["Value"]), int(item["ModifyIndex"])))
        out.sort(key=lambda t: t[0])
        return out

    def put(self, key: str, doc: dict, expected_revision: int | None = None) -> int:
        # A per-write token lets the read-back below tell our write from a later one.
        token = uuid.uuid4().hex
        body = json.dumps({WRITE_TOKEN: token, **doc}, sort_keys=True)
        full = self._k(key)
        try:
            if expected_revision is None:
                ok = self._c.kv.put(full, body)
            else:
                ok = self._c.kv.put(full, body, cas=int(expected_revision))
            if not ok:
                raise RevisionConflict(f"{key} changed concurrently (expected revision {expected_revision}); "
                                       "re-read it and retry")
            # Consul's PUT answers only true/false; read back the index our write produced.
            _, item = self._c.kv.get(full)
        except (requests.RequestException, consul.ConsulException) as exc:
            raise self._down(exc) from None
        if item is None:
            raise RevisionConflict(f"{key} was deleted right after this write; re-read it and retry")
        index = int(item["ModifyIndex"])
        if _decode(item["Value"], keep_token=True).get(WRITE_TOKEN) == token:
            return index
        # Someone wrote after us. Our write's exact index is unknown, but it is below ``index``,
        # so hand back a revision that can never match again: a check-and-set with it conflicts
        # and makes the caller re-read, instead of overwriting the newer write.
        return index - 1

    def delete(self, key: str, expected_revision: int | None = None) -> None:
        full = self._k(key)
        try:
            if expected_revision is None:
                self._c.kv.delete(full)
                return
            if expected_revision == 0:  # "must not exist": nothing to delete, or a conflict
                _, item = self._c.kv.get(full)
                if item is not None:
                    raise RevisionConflict(f"{key} exists (revision {item['ModifyIndex']}), expected none")
                return
            if not self._c.kv.delete(full, cas=int(expected_revision)):
                raise RevisionConflict(f"{key} changed concurrently; re-read it and retry")
        except (requests.RequestException, consul.ConsulException) as exc:
            raise self._down(exc) from None

    def close(self) -> None:
        pass
