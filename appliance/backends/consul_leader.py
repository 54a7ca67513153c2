"""Leader election among the edge routers through a Consul session and a KV lock.

The recipe is Consul's own (reference §19, §20): each edge creates a session with a TTL and
``Behavior=delete``, and tries ``PUT /v1/kv/<key>?acquire=<session>`` with its identity as the
value. The one whose acquire returns ``true`` leads while it renews its session every third of
the TTL. The others hold a blocking query on the key and try again whenever it changes.

* **Leader stops cleanly:** it releases the key (``?release=``, which Consul does not follow with
  a lock-delay) and destroys its session; the others' blocking queries return and one acquires.
* **Leader dies:** its session is invalidated once the TTL passes without a renewal (Consul reaps
  within 2 x TTL), which deletes the key (``Behavior=delete``: no stale identity is left behind);
  after the session's lock-delay another edge acquires.
* **Leader's session invalidated** (a failed node check, an operator's destroy): the key is
  deleted, which wakes the leader's own blocking query on it; it steps down at once, well within
  the lock-delay that keeps the others from taking the key.
* **Leader cut off from Consul:** it believes it leads only until one TTL after the start of its
  last successful renewal, which is before Consul can expire the session and hand the key to
  someone else; then it stops leading by itself.

Consul errors are retried with tenacity's exponential backoff; while Consul is unreachable no edge
leads, so nothing scales ahead of traffic or reaps (requests still start what they wait for).
"""

from __future__ import annotations

import json
import logging
import threading
import time

import consul
import requests
import tenacity

from appliance.backends.consul_kv import consul_client

log = logging.getLogger("appliance.leader")

KEY = "faas/scaler/leader"
#: Session TTL in seconds (Consul accepts 10 to 86400).
TTL_S = 15
#: Seconds Consul keeps the lock free after the leader's session is invalidated (not after a clean
#: release). Short: a second leader for a moment costs at most a few extra starts or a refused
#: drain (instances refuse to drain while busy), while every second here is a second without one.
LOCK_DELAY_S = 2

#: Shortest time between two blocking queries on the key.
MIN_QUERY_GAP_S = 0.05

_TRANSIENT = (consul.ConsulException, requests.RequestException)


class ConsulLeaderLock:
    def __init__(self, addr: str, *, token: str = "", key: str = KEY, ttl_s: int = TTL_S,
                 lock_delay_s: int = LOCK_DELAY_S, clock=time.monotonic):
        if not 10 <= ttl_s <= 86400:
            raise ValueError(f"a Consul session TTL must be from 10 to 86400 s, was {ttl_s!r}")
        self.key = key
        self.ttl_s = int(ttl_s)
        self.lock_delay_s = int(lock_delay_s)
        self.clock = clock
        # Longer than the blocking wait below, so the client never cuts a blocking query short.
        self._c = consul_client(addr, token, timeout_s=float(self.ttl_s))
        self._lock = threading.Lock()   # guards the fields below and orders steps against close()
        self._stop = threading.Event()
        self._value = ""
        self._holder: dict | None = None
        self._session: str | None = None
        self._leader_until = -1.0       # monotonic; leading while clock() < this
        self._index: str | None = None  # the key's last X-Consul-Index, for the blocking query
        self._thread: threading.Thread | None = None

    # -- the leadership interface (see appliance/core/leadership.py) --------------------------------

    def start(self, holder: dict) -> None:
        self._holder = dict(holder)
        self._value = json.dumps(self._holder, sort_keys=True)
        self._thread = threading.Thread(target=self._run, daemon=True, name="leader-election")
        self._thread.start()

    def is_leader(self) -> bool:
        with self._lock:
            return self.clock() < self._leader_until

    def leader(self) -> dict | None:
        """The holder of the lock now, read from Consul; None when nobody holds it."""
        _, item = self._c.kv.get(self.key)
        if not item or not item.get("Session") or item.get("Value") is None:
            return None
        try:
            holder = json.loads(item["Value"])
        except ValueError:
            return None
        return holder if isinstance(holder, dict) else None

    def close(self) -> None:
        """Step down: release the key, then destroy the session (in that order: a release is not
        followed by a lock-delay, an invalidation is)."""
        with self._lock:
            self._stop.set()
            session, leading = self._session, self.clock() < self._leader_until
            self._session, self._leader_until = None, -1.0
        if session is None:
            return
        try:
            if leading:
                self._c.kv.put(self.key, self._value, release=session)
                log.info("event=leader_released key=%s edge=%s", self.key, self._edge())
            self._c.session.destroy(session)
        except _TRANSIENT as exc:
            log.warning("event=leader_release_failed key=%s error=%r", self.key, str(exc)[:200])

    # -- the campaign -------------------------------------------------------------------------

    def _edge(self) -> str:
        return (self._holder or {}).get("edge", "?")

    def _run(self) -> None:
        def before_sleep(rs: tenacity.RetryCallState) -> None:
            exc = rs.outcome.exception() if rs.outcome else None
            log.warning("event=leader_election_retry key=%s attempt=%d error=%r", self.key, rs.attempt_number,
                        str(exc)[:200])

        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(_TRANSIENT),
            wait=tenacity.wait_exponential_jitter(initial=0.2, max=self.ttl_s / 3, jitter=0.2),
            stop=lambda rs: self._stop.is_set(), sleep=self._stop.wait, before_sleep=before_sleep, reraise=True)
        while not self._stop.is_set():
            try:
                retrying(self._step)
            except _TRANSIENT:
                return  # stopped while retrying
            except Exception:  # noqa: BLE001 - the campaign must outlive one bad answer
                log.exception("event=leader_election_failed key=%s", self.key)
                self._stop.wait(1.0)

    def _step(self) -> None:
        """Renew or create the session, then hold, take or watch the lock."""
        with self._lock:
            if self._stop.is_set():
                return
            t0 = self.clock()
            if self._session is None:
                self._session = self._c.session.create(name=f"faas-scaler-leader-{self._edge()}", behavior="delete",
                                                       ttl=self.ttl_s, lock_delay=self.lock_delay_s)
            else:
                try:
                    self._c.session.renew(self._session)
                except consul.NotFound:
                    self._lose("session expired")
                    self._session = None
                    return
            self._index, item = self._c.kv.get(self.key)
            held_by = (item or {}).get("Session")
            if held_by is None:
                if self._c.kv.put(self.key, self._value, acquire=self._session):
                    held_by = self._session
                else:  # another edge was quicker, or the lock-delay of a dead leader runs
                    self._index, item = self._c.kv.get(self.key)
                    held_by = (item or {}).get("Session")
            if held_by == self._session:
                if self._leader_until < t0:
                    log.info("event=leader_elected key=%s edge=%s session=%s", self.key, self._edge(), self._session)
                self._leader_until = t0 + self.ttl_s
            else:
                self._lose("held by another edge")
        # Leader and followers alike wait until the key changes (released, deleted, taken) or it is
        # time to renew the session. A leader whose session Consul invalidates sees its key deleted
        # at once and steps down on the next step, well within the lock-delay.
        started = self.clock()
        self._c.kv.get(self.key, index=self._index or None, wait=f"{int(self.ttl_s / 3)}s")
        if self.clock() - started < MIN_QUERY_GAP_S:  # Consul's client rule: rate-limit the loop
            self._stop.wait(MIN_QUERY_GAP_S)

    def _lose(self, reason: str) -> None:
        """Lock held."""
        if self._leader_until >= 0:
            log.warning("event=leader_lost key=%s edge=%s reason=%r", self.key, self._edge(), reason)
        self._leader_until = -1.0
