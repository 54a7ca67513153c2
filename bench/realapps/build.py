"""Vendoring each application's pinned dependencies, and its deployment package, in the bench cache.

    <cache>/realapps/deps-<app>-<key>/     pip install --target of requirements.txt (key: cache_key)
    <cache>/realapps/bundle-<app>-<key>/   those dependencies + app.py, byte-compiled
    <cache>/realapps/bundle-<app>-<key>.zip  the same tree zipped: what the appliance is given

The bundle directory is also what serverless-offline imports from (its ``PYTHONPATH``), so both
platforms run the same files. Everything is byte-compiled with ``--invalidation-mode
unchecked-hash``: as with a ``pip install --target`` package deployed to Lambda, the ``.pyc``
files travel with the code, and unchecked-hash ones stay valid whatever modification times the
unpacking leaves (zip keeps them to 2 s), so neither platform recompiles at a cold start.

pip is the benchmark's own interpreter's, with its configured index (PyPI), ``--only-binary``
(wheels for this Python) and ``--no-deps``: the requirements pin every package.
"""

from __future__ import annotations

import compileall
import hashlib
import os
import py_compile
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from . import APPS, App

#: Bump to rebuild every cached tree when the way it is built changes.
LAYOUT = "1"


class BuildError(RuntimeError):
    pass


def cache_key(requirements: str, python: str = f"{sys.version_info.major}.{sys.version_info.minor}") -> str:
    """The cache key of a vendored tree: the requirements file's text, the Python it was built for
    (wheels are per minor version) and the build layout. Comments and blank lines count too: the
    key follows the file's hash, nothing is parsed."""
    h = hashlib.sha256()
    for part in (LAYOUT, python, requirements):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def bundle_key(deps_key: str, sources: dict[str, bytes]) -> str:
    """The key of a bundle: its dependencies' key and the app's own files (name -> content)."""
    h = hashlib.sha256(deps_key.encode() + b"\0")
    for name in sorted(sources):
        h.update(name.encode() + b"\0" + hashlib.sha256(sources[name]).digest())
    return h.hexdigest()[:16]


def _sources(app: App) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(app.dir.glob("*.py"))}


def _compile(root: Path) -> None:
    ok = compileall.compile_dir(str(root), quiet=2, workers=0, ddir=None,
                                invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
    if not ok:
        raise BuildError(f"byte-compiling {root} failed")


def vendor(app: App, cache: Path, log) -> Path:
    """The app's pinned dependencies installed with pip into ``cache`` (once per cache key)."""
    reqs = app.requirements.read_text()
    d = cache / "realapps" / f"deps-{app.name}-{cache_key(reqs)}"
    if (d / ".done").exists():
        return d
    log(f"[realapps] vendoring {app.name} from {app.requirements.relative_to(app.dir.parent.parent.parent)} ...")
    tmp = d.with_name(d.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps",
           "--only-binary=:all:", "--no-compile", "--target", str(tmp), "-r", str(app.requirements)]
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600, check=False)
    if p.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise BuildError(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stdout[-3000:]}")
    shutil.rmtree(tmp / "bin", ignore_errors=True)       # console scripts: not part of a Lambda package
    _compile(tmp)
    (tmp / ".done").write_text(" ".join(cmd) + "\n")
    shutil.rmtree(d, ignore_errors=True)
    os.replace(tmp, d)
    return d


def bundle(app: App, cache: Path, log) -> tuple[Path, Path]:
    """(directory, zip) of app + vendored dependencies, byte-compiled; rebuilt when either changes."""
    deps = vendor(app, cache, log)
    sources = _sources(app)
    key = bundle_key(deps.name, sources)
    d = cache / "realapps" / f"bundle-{app.name}-{key}"
    z = d.with_suffix(".zip")
    if (d / ".done").exists() and z.exists():
        return d, z
    log(f"[realapps] packaging {app.name} ...")
    shutil.rmtree(d, ignore_errors=True)
    shutil.copytree(deps, d, ignore=shutil.ignore_patterns(".done"))
    for name, data in sources.items():
        (d / name).write_bytes(data)
    _compile(d)
    tmpz = z.with_suffix(".zip.tmp")
    with zipfile.ZipFile(tmpz, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for f in sorted(d.rglob("*")):
            if f.is_file() and f.name != ".done":
                zf.write(f, f.relative_to(d).as_posix())
    os.replace(tmpz, z)
    (d / ".done").write_text(key + "\n")
    _prune(cache / "realapps", app.name, keep={d.name, z.name, deps.name})
    return d, z


def _prune(root: Path, app: str, keep: set[str]) -> None:
    """Old trees of ``app`` (other keys) go: the cache holds one build per application."""
    for p in root.glob(f"*-{app}-*"):
        if p.name not in keep and not p.name.endswith(".tmp"):
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)


def build_all(cache: Path, log, names=None) -> dict[str, dict]:
    """Every app's bundle: ``{app: {"dir", "zip", "zip_bytes", "files"}}``."""
    out = {}
    for name in names or APPS:
        d, z = bundle(APPS[name], cache, log)
        with zipfile.ZipFile(z) as zf:
            files = len(zf.namelist())
        out[name] = {"dir": d, "zip": z, "zip_bytes": z.stat().st_size, "files": files}
    return out
