"""Keeps a runtime-pool slot supplied with generic instances, without Nomad restarts.

``python -m appliance instance`` with ``FAAS_POOL=1`` execs this file (standard library only, run
with ``python -I`` so it costs a bare interpreter) with the runtime's bootstrap command as its
arguments. It stays the Nomad task's process for the allocation's life and runs the bootstrap as
its child:

* before each start it clears the claim an earlier incarnation left on this allocation in Consul
  KV (``faas/pool/claims/<alloc id>``), so the fresh generic instance can be claimed again;
* a child that exits 0 without this process having been told to stop was specialised, served and
  drained (or refused a specialisation it could not load): a fresh generic child is started in its
  place. Nomad never sees that exit, so its restart policy (a budget of attempts per interval,
  then a delay) counts only real failures, and a busy slot is never parked for the rest of the
  interval after ten quick drains;
* a non-zero exit ends this process with the child's status (Nomad's restart policy decides), and
  so does a loop of more than ``RECYCLE_LIMIT`` recycles within ``RECYCLE_WINDOW_S``;
* SIGTERM and SIGINT are passed to the child; this process exits once it has.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request

CLAIM_PREFIX = "faas/pool/claims/"
#: More than this many in-place recycles within RECYCLE_WINDOW_S is a loop, not work: exit 1 and
#: let Nomad's restart policy (with its delay) take over.
RECYCLE_LIMIT = 20
RECYCLE_WINDOW_S = 10.0


def _say(event: str, **kv) -> None:
    fields = " ".join(f"{k}={v}" for k, v in kv.items())
    print(f"[faas-instance] event={event} {fields}".rstrip(), file=sys.stderr, flush=True)


def clear_stale_claim(consul_addr: str, alloc_id: str) -> None:
    addr = consul_addr if "://" in consul_addr else f"http://{consul_addr}"
    req = urllib.request.Request(f"{addr.rstrip('/')}/v1/kv/{CLAIM_PREFIX}{alloc_id}", method="DELETE")
    token = os.environ.get("CONSUL_HTTP_TOKEN")
    if token:
        req.add_header("X-Consul-Token", token)
    try:
        urllib.request.urlopen(req, timeout=5).close()
    except OSError as exc:
        _say("claim_clear_failed", alloc=alloc_id, error=repr(str(exc)))


def supervise(cmd: list[str], env: dict, clock=time.monotonic) -> int:
    """Run generic pool instances one after the other; returns the exit status for Nomad."""
    alloc = env.get("FAAS_INSTANCE_ID") or env.get("NOMAD_ALLOC_ID")
    stopping = False
    child: subprocess.Popen | None = None

    def forward(signum, _frame):
        nonlocal stopping
        stopping = True
        if child is not None and child.poll() is None:
            child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    recycled: list[float] = []
    while True:
        if alloc and env.get("CONSUL_HTTP_ADDR"):
            clear_stale_claim(env["CONSUL_HTTP_ADDR"], alloc)
        if stopping:
            return 0
        child = subprocess.Popen(cmd, env=env)
        if stopping:  # the signal came between the check above and the start
            child.send_signal(signal.SIGTERM)
        rc = child.wait()
        if stopping or rc != 0:
            return rc if rc >= 0 else 128 - rc
        now = clock()
        recycled = [t for t in recycled if now - t < RECYCLE_WINDOW_S] + [now]
        if len(recycled) > RECYCLE_LIMIT:
            _say("pool_instance_looping", alloc=alloc or "-", recycles=len(recycled), window_s=RECYCLE_WINDOW_S)
            return 1
        _say("pool_instance_recycled", alloc=alloc or "-")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: pool_supervisor.py <bootstrap command...>")
    sys.exit(supervise(sys.argv[1:], dict(os.environ)))
