"""``python -m appliance instance``: what a Nomad task runs to become a function instance.

Nomad starts this with the runtime contract's environment (runtimes/README.md) plus:

* ``FAAS_RUNTIME``: which bootstrap to run (``python3.11``, ``nodejs20``, ``provided``);
* ``FAAS_CODE_DIGEST``, ``FAAS_CODE_CACHE_DIR``, ``FAAS_CODE_URL``: the code to serve, the node's
  content-addressed cache, and where to fetch the package from (a presigned S3 URL, so nodes need
  no S3 credentials);
* ``FAAS_FUNCTION_ENV``: the function's environment variables as a JSON object (a dispatched
  instance; a pool instance receives them with ``/_/specialize``);
* ``FAAS_POOL=1`` for a generic pool instance (no code yet).

It makes sure ``<cache>/<digest>/`` holds the unpacked code (fetched at most once per digest per
node: a file lock serialises instances starting together, the check after taking it skips the
fetch), verifies the sha256, unpacks with :func:`appliance.core.codepkg.unpack` (all of its safety
checks), then replaces itself with the runtime's bootstrap (``os.execv``), so Nomad's signals and
exit status are the runtime's own. A pool instance starting afresh first clears a claim left on its
allocation by an earlier incarnation (Nomad restarts a drained pool instance in place).

``python -m appliance.instances.launcher`` runs only the fetch (:func:`fetch_main`). A pool instance
whose runtime cannot take the file lock itself (Node.js has no ``flock``) is given that command in
``FAAS_CODE_FETCHER`` and runs it when ``/_/specialize`` names code by URL, so every runtime shares
one lock, one set of package checks and one fetch per digest per node.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import sys
import time
import urllib.request
from pathlib import Path

from appliance.core import codepkg
from appliance.core.model import RESERVED_ENV_PREFIXES

CLAIM_PREFIX = "faas/pool/claims/"
DIGEST = re.compile(r"[0-9a-f]{64}")


def _say(event: str, **kv) -> None:
    fields = " ".join(f"{k}={v}" for k, v in kv.items())
    print(f"[faas-instance] event={event} {fields}".rstrip(), file=sys.stderr, flush=True)


def bootstrap_command(runtime: str, runtimes_dir: Path) -> list[str]:
    if runtime.startswith("python"):
        return [sys.executable, "-X", "frozen_modules=on", str(runtimes_dir / "python" / "bootstrap.py")]
    if runtime.startswith("nodejs"):
        return [os.environ.get("APPLIANCE_NODE", "/usr/bin/node"), str(runtimes_dir / "node" / "bootstrap.js")]
    if runtime.startswith("provided"):  # serves the Lambda Runtime API to the package's own bootstrap
        return [sys.executable, "-I", str(runtimes_dir / "provided" / "bootstrap.py")]
    raise SystemExit(f"faas instance: unknown runtime {runtime!r}")


def ensure_code(digest: str, cache_dir: Path, url: str, limits: codepkg.Limits) -> tuple[Path, bool]:
    """(directory of the unpacked code, fetched now?)."""
    dest = cache_dir / digest
    if dest.is_dir():
        return dest, False
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / f".{digest}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if dest.is_dir():
            return dest, False
        if not url:
            raise SystemExit(f"faas instance: code {digest} is not cached in {cache_dir} and FAAS_CODE_URL is empty")
        t0 = time.monotonic()
        with urllib.request.urlopen(url, timeout=60) as r:
            data = r.read(limits.max_zip_bytes + 1)
        if len(data) > limits.max_zip_bytes:
            raise SystemExit(f"faas instance: package {digest} is larger than {limits.max_zip_bytes} bytes")
        got = hashlib.sha256(data).hexdigest()
        if got != digest:
            raise SystemExit(f"faas instance: downloaded package hashes to {got}, expected {digest}; refusing it")
        codepkg.unpack(data, dest, limits)
        _say("code_fetched", digest=digest, bytes=len(data), ms=f"{(time.monotonic() - t0) * 1000:.1f}")
        return dest, True


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


def fetch_main(environ=None) -> None:
    """Make sure the code of ``FAAS_CODE_DIGEST`` is in ``FAAS_CODE_CACHE_DIR`` (fetching it from
    ``FAAS_CODE_URL`` when it is not) and print its directory; exit 1 with the reason otherwise."""
    env = os.environ if environ is None else environ
    digest = env.get("FAAS_CODE_DIGEST") or ""
    if not DIGEST.fullmatch(digest):
        raise SystemExit("faas instance: FAAS_CODE_DIGEST must be 64 lowercase hex digits (a sha256)")
    cache = Path(env.get("FAAS_CODE_CACHE_DIR") or "/var/lib/faas-appliance/code-cache")
    try:
        code_dir, _ = ensure_code(digest, cache, env.get("FAAS_CODE_URL") or "", codepkg.Limits())
    except SystemExit:
        raise
    except Exception as exc:  # noqa: BLE001 - one line for the runtime that asked, whatever failed
        raise SystemExit(f"faas instance: {getattr(exc, 'message', None) or exc}") from None
    print(code_dir, flush=True)


def function_env(text: str) -> dict[str, str]:
    """The function's own variables from ``FAAS_FUNCTION_ENV``. Reserved names were refused when the
    function was configured; they are skipped here too, so nothing can override the contract's."""
    try:
        doc = json.loads(text or "{}")
    except ValueError:
        raise SystemExit("faas instance: FAAS_FUNCTION_ENV is not a JSON object") from None
    if not isinstance(doc, dict):
        raise SystemExit("faas instance: FAAS_FUNCTION_ENV is not a JSON object")
    return {str(k): str(v) for k, v in doc.items() if not str(k).startswith(RESERVED_ENV_PREFIXES)}


def main(environ=None) -> None:
    env = dict(os.environ if environ is None else environ)
    runtime = env.get("FAAS_RUNTIME") or "python3.11"
    runtimes_dir = Path(env.get("APPLIANCE_RUNTIMES_DIR") or Path(__file__).resolve().parents[2] / "runtimes")
    if env.get("FAAS_POOL") in ("1", "true", "yes"):
        alloc = env.get("FAAS_INSTANCE_ID") or env.get("NOMAD_ALLOC_ID")
        if alloc and env.get("CONSUL_HTTP_ADDR"):
            clear_stale_claim(env["CONSUL_HTTP_ADDR"], alloc)
        env.setdefault("FAAS_CODE_FETCHER", json.dumps([sys.executable, "-m", "appliance.instances.launcher"]))
    else:
        digest = env.get("FAAS_CODE_DIGEST") or ""
        if not digest:
            raise SystemExit("faas instance: FAAS_CODE_DIGEST is not set")
        cache = Path(env.get("FAAS_CODE_CACHE_DIR") or "/var/lib/faas-appliance/code-cache")
        code_dir, _ = ensure_code(digest, cache, env.get("FAAS_CODE_URL") or "", codepkg.Limits())
        env["FAAS_CODE_DIR"] = str(code_dir)
        env.update(function_env(env.pop("FAAS_FUNCTION_ENV", "")))
    cmd = bootstrap_command(runtime, runtimes_dir)
    env.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    os.execve(cmd[0], cmd, env)


if __name__ == "__main__":
    fetch_main()
