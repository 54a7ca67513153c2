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
exit status are the runtime's own.

A pool instance is supervised instead (:mod:`appliance.instances.pool_supervisor`, which the
launcher execs): it stays as the task's process and runs the bootstrap as its child. When the child exits 0 without having been told to
stop (it was specialised, served, drained), the launcher clears the allocation's claim and starts
a fresh generic instance in place. Nomad never sees that exit, so its restart policy (a budget of
attempts per interval, then a delay) counts only real failures: a busy pool instance that is
specialised and drained every few seconds does not use up the budget and then idle for the rest
of the interval. A non-zero exit ends the supervisor with the child's status, and Nomad's restart policy decides (so does a loop of
recycles). SIGTERM and SIGINT are passed to the child and end the supervisor once it exits.

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
from appliance.core.model import is_reserved_env
from appliance.instances.pool_supervisor import CLAIM_PREFIX, clear_stale_claim  # noqa: F401 - re-exported

DIGEST = re.compile(r"[0-9a-f]{64}")


def _say(event: str, **kv) -> None:
    fields = " ".join(f"{k}={v}" for k, v in kv.items())
    print(f"[faas-instance] event={event} {fields}".rstrip(), file=sys.stderr, flush=True)


def bootstrap_command(runtime: str, runtimes_dir: Path) -> list[str]:
    if runtime.startswith("python"):
        return [sys.executable, "-S", "-X", "frozen_modules=on", str(runtimes_dir / "python" / "bootstrap.py")]
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


def ensure_layers(text: str, cache_dir: Path, limits: codepkg.Limits) -> Path | None:
    """The function's layers (``FAAS_LAYERS``: a JSON list of ``{"digest", "url"}`` in order), each
    fetched once per node like code, merged once per list (:func:`codepkg.merge_layers`) under the
    same file lock discipline; None without layers."""
    try:
        layers = json.loads(text or "[]")
        digests = [str(x["digest"]) for x in layers]
        urls = [str(x.get("url") or "") for x in layers]
    except (ValueError, TypeError, KeyError):
        raise SystemExit("faas instance: FAAS_LAYERS is not a JSON list of {digest, url}") from None
    if not digests:
        return None
    for d in digests:
        if not DIGEST.fullmatch(d):
            raise SystemExit("faas instance: a layer digest in FAAS_LAYERS is not 64 lowercase hex digits")
    dirs = [ensure_code(d, cache_dir, u, limits)[0] for d, u in zip(digests, urls)]
    key = hashlib.sha256(",".join(digests).encode()).hexdigest()
    with open(cache_dir / f".layers-{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return codepkg.merge_layers(dirs, cache_dir)


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
    return {str(k): str(v) for k, v in doc.items() if not is_reserved_env(str(k))}


def main(environ=None) -> None:
    env = dict(os.environ if environ is None else environ)
    runtime = env.get("FAAS_RUNTIME") or "python3.11"
    runtimes_dir = Path(env.get("APPLIANCE_RUNTIMES_DIR") or Path(__file__).resolve().parents[2] / "runtimes")
    if env.get("FAAS_POOL") in ("1", "true", "yes"):
        env.setdefault("FAAS_CODE_FETCHER", json.dumps([sys.executable, "-m", "appliance.instances.launcher"]))
        env.setdefault("PYTHONDONTWRITEBYTECODE", "1")
        # The supervisor stays resident for the allocation's life: a standard-library-only script
        # started in isolated mode, so it costs a bare interpreter, not this process's imports.
        supervisor = str(Path(__file__).with_name("pool_supervisor.py"))
        cmd = [sys.executable, "-I", supervisor, *bootstrap_command(runtime, runtimes_dir)]
        os.execve(cmd[0], cmd, env)
    else:
        digest = env.get("FAAS_CODE_DIGEST") or ""
        if not digest:
            raise SystemExit("faas instance: FAAS_CODE_DIGEST is not set")
        cache = Path(env.get("FAAS_CODE_CACHE_DIR") or "/var/lib/faas-appliance/code-cache")
        code_dir, _ = ensure_code(digest, cache, env.get("FAAS_CODE_URL") or "", codepkg.Limits())
        env["FAAS_CODE_DIR"] = str(code_dir)
        layers_dir = ensure_layers(env.pop("FAAS_LAYERS", ""), cache, codepkg.Limits())
        if layers_dir is not None:
            env["FAAS_LAYERS_DIR"] = str(layers_dir)
        env.update(function_env(env.pop("FAAS_FUNCTION_ENV", "")))
    cmd = bootstrap_command(runtime, runtimes_dir)
    env.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    os.execve(cmd[0], cmd, env)


if __name__ == "__main__":
    fetch_main()
