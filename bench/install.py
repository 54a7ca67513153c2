"""Installs the peers into a cache directory, once per version set.

Layout of the cache (``$FAAS_BENCH_CACHE``, default ``$XDG_CACHE_HOME/faas-appliance/bench``,
i.e. ``~/.cache/faas-appliance/bench``):

    bin/            python3, python3.11, python -> the real interpreter (no version-manager shims)
    venv-gunicorn/  gunicorn + Flask (bench/requirements-gunicorn.txt)
    venv-ff/        functions-framework (bench/requirements-ff.txt), apart so it cannot clash with our pins
    npm/            serverless@3 + serverless-offline@13 (NPM_PACKAGES), from the npm registry

Each part carries a stamp of what it was built from and is rebuilt when that changes. pip and npm
are used through their ordinary clients, with their configured registries.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
NPM_PACKAGES = ("serverless@3.40.0", "serverless-offline@13.10.1")


def default_cache() -> Path:
    env = os.environ.get("FAAS_BENCH_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "faas-appliance" / "bench"


def real_python() -> str:
    """The interpreter behind the one running us, with venvs and shims resolved.

    pyenv-style shims are shell scripts that cost ~90 ms per start; a benchmark of interpreter
    start-up must not measure them, so every peer gets this binary as ``python3``.
    """
    base = getattr(sys, "_base_executable", None) or sys.executable
    return os.path.realpath(base)


class InstallError(RuntimeError):
    pass


def _stamp_ok(d: Path, stamp: str) -> bool:
    f = d / ".bench-stamp"
    return f.exists() and f.read_text() == stamp


def _write_stamp(d: Path, stamp: str) -> None:
    (d / ".bench-stamp").write_text(stamp)


def _run(cmd: list[str], log, **kw) -> None:
    log(f"  $ {' '.join(cmd)}")
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False, **kw)
    if p.returncode != 0:
        raise InstallError(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stdout[-3000:]}")


def python_bin(cache: Path) -> Path:
    """``cache/bin`` with python3/python3.11/python pointing at the real interpreter."""
    d = cache / "bin"
    d.mkdir(parents=True, exist_ok=True)
    target = real_python()
    for name in ("python3", f"python{sys.version_info.major}.{sys.version_info.minor}", "python"):
        link = d / name
        if link.is_symlink() and os.readlink(link) == target:
            continue
        if link.exists() or link.is_symlink():
            link.unlink()
        link.symlink_to(target)
    return d


def venv(cache: Path, name: str, requirements: Path, log) -> Path:
    d = cache / name
    stamp = hashlib.sha256((real_python() + "\n" + requirements.read_text()).encode()).hexdigest()
    if _stamp_ok(d, stamp):
        return d
    log(f"installing {name} from {requirements.name} ...")
    if d.exists():
        shutil.rmtree(d)
    _run([real_python(), "-m", "venv", str(d)], log)
    _run([str(d / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
          "-r", str(requirements)], log)
    _write_stamp(d, stamp)
    return d


def npm(cache: Path, log) -> Path | None:
    """The npm directory, or None when node/npm are missing (the peer is then skipped)."""
    if not shutil.which("node") or not shutil.which("npm"):
        return None
    d = cache / "npm"
    stamp = " ".join(NPM_PACKAGES)
    if _stamp_ok(d, stamp) and (d / "node_modules" / "serverless-offline").is_dir():
        return d
    log(f"installing {stamp} with npm ...")
    d.mkdir(parents=True, exist_ok=True)
    (d / "package.json").write_text('{"name": "faas-bench-peers", "private": true, "version": "0.0.0"}\n')
    _run(["npm", "install", "--no-audit", "--no-fund", "--loglevel=error", "--save-exact", *NPM_PACKAGES], log,
         cwd=str(d))
    _write_stamp(d, stamp)
    return d


def install_all(cache: Path, log, want: set[str]) -> dict:
    """Install what the selected peers need; returns paths and notes (skipped peers say why)."""
    cache.mkdir(parents=True, exist_ok=True)
    out: dict = {"cache": cache, "bin": python_bin(cache), "notes": {}}
    if "gunicorn" in want:
        out["venv-gunicorn"] = venv(cache, "venv-gunicorn", HERE / "requirements-gunicorn.txt", log)
    if "functions-framework" in want:
        out["venv-ff"] = venv(cache, "venv-ff", HERE / "requirements-ff.txt", log)
    if "serverless-offline" in want:
        d = npm(cache, log)
        if d is None:
            out["notes"]["serverless-offline"] = "node or npm is not installed (Debian: apt-get install nodejs npm)"
        out["npm"] = d
    return out
