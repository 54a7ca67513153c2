"""Code packages: checking uploaded zips, building one from a single file, unpacking safely.

A zip is untrusted input. We refuse, with a message that says what to fix: anything that is not a
zip, entries with absolute paths or ``..`` components, symlinks and device files, encrypted
entries, duplicate names (also once normalised: ``./index.py`` and ``index.py``; a file ``a`` and
an entry ``a/b``), more than ``max_files`` entries, and more than ``max_unpacked_bytes``
once inflated (counted while inflating, since the sizes a zip declares can lie), and packages that
inflate more than ``BOMB_RATIO`` times their own size, as a whole and per entry. Unpacking writes
to a temporary directory and renames it into place, so a half-written tree is never seen.
"""

from __future__ import annotations

import compileall
import hashlib
import io
import os
import shutil
import stat
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from appliance.core.errors import PayloadTooLarge, UnsafeCode, ValidationError

#: Above this inflated/compressed ratio an entry larger than BOMB_MIN_BYTES is treated as a bomb,
#: and so is a whole package that inflates to more than BOMB_MIN_BYTES at this ratio to the zip's
#: own size: many small entries of zeros each pass a per-entry check (each 1 MiB entry of zeros
#: compresses to 1 KiB) while the package as a whole inflates a thousandfold.
BOMB_RATIO = 200
BOMB_MIN_BYTES = 1 << 20
SOURCE_SUFFIXES = (".py", ".js", ".mjs", ".cjs", ".json")


@dataclass(frozen=True)
class Limits:
    max_zip_bytes: int = 50 << 20
    max_unpacked_bytes: int = 250 << 20
    max_files: int = 5000


@dataclass(frozen=True)
class PackageInfo:
    digest: str
    size: int
    files: int
    unpacked_size: int
    names: tuple[str, ...]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_entry_name(name: str) -> str:
    if not name or "\x00" in name:
        raise UnsafeCode("the zip has an entry with an empty or NUL-containing name; rebuild the zip", field="code")
    if "\\" in name:
        raise UnsafeCode(f"zip entry {name!r} uses backslashes; build the zip with '/' separators", field="code")
    path = PurePosixPath(name)
    if path.is_absolute() or (len(name) > 1 and name[1] == ":"):
        raise UnsafeCode(f"zip entry {name!r} has an absolute path; paths must be relative to the zip root", field="code")
    if any(part == ".." for part in path.parts):
        raise UnsafeCode(f"zip entry {name!r} climbs out of the package with '..'; remove it", field="code")
    return name


def normalised(name: str) -> str:
    """An entry's path as the file system will see it: ``./a//b/`` is ``a/b``. Two entries with
    the same normalised path would unpack onto each other, so the package is refused."""
    return "/".join(p for p in name.split("/") if p not in ("", "."))


def inspect_zip(data: bytes, limits: Limits) -> PackageInfo:
    """Validate a zip without unpacking it; raises UnsafeCode / PayloadTooLarge with the fix."""
    if len(data) > limits.max_zip_bytes:
        raise PayloadTooLarge(
            f"the code package is {len(data)} bytes; the limit is {limits.max_zip_bytes}: "
            "leave out dependencies the runtime already has, or raise APPLIANCE_MAX_CODE_BYTES", field="code")
    if not data:
        raise ValidationError("the code package is empty: upload a zip or a source file", field="code")
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
        infos = zf.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError, NotImplementedError) as exc:
        raise UnsafeCode(f"the code package is not a readable zip ({exc}); upload a .zip file, or a single "
                         "source file with ?filename=index.py", field="code") from None
    if len(infos) > limits.max_files:
        raise UnsafeCode(f"the zip has {len(infos)} entries; the limit is {limits.max_files}", field="code")
    seen: dict[str, str] = {}
    files: set[str] = set()
    total = 0
    names = []
    for info in infos:
        name = check_entry_name(info.filename)
        key = normalised(name)
        if not key:
            if info.is_dir():
                continue   # "./": the root itself
            raise UnsafeCode(f"zip entry {name!r} names no file; rebuild the zip", field="code")
        if key in seen:
            what = "twice" if seen[key] == name else f"twice, also as {seen[key]!r}"
            raise UnsafeCode(f"zip entry {name!r} appears {what}; rebuild the zip", field="code")
        seen[key] = name
        if not info.is_dir():
            files.add(key)
        # Unix zips keep st_mode in the high bits; a file type other than regular or directory
        # (symlink, device, fifo) is refused. Permission-only modes (no type bits) are fine.
        mode = info.external_attr >> 16
        ftype = stat.S_IFMT(mode)
        if ftype and ftype not in (stat.S_IFREG, stat.S_IFDIR):
            kind = "a symbolic link" if stat.S_ISLNK(mode) else "a special file"
            raise UnsafeCode(f"zip entry {name!r} is {kind}; packages may hold only files and directories",
                             field="code")
        if info.flag_bits & 0x1:
            raise UnsafeCode(f"zip entry {name!r} is encrypted; upload an unencrypted zip", field="code")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise UnsafeCode(f"zip entry {name!r} uses an unsupported compression method; use deflate", field="code")
        total += info.file_size
        if total > limits.max_unpacked_bytes:
            raise UnsafeCode(f"the zip inflates to more than {limits.max_unpacked_bytes} bytes; "
                             "that is over the unpacked size limit", field="code")
        if (info.file_size > BOMB_MIN_BYTES and info.compress_size
                and info.file_size / info.compress_size > BOMB_RATIO):
            raise UnsafeCode(f"zip entry {name!r} inflates {info.file_size // max(info.compress_size, 1)}x; "
                             "refused as a zip bomb", field="code")
        if not info.is_dir():
            names.append(key)
    # A file cannot also be a directory: "a" and "a/b" would unpack onto each other.
    for key in seen:
        parent = key.rpartition("/")[0]
        while parent:
            if parent in files:
                raise UnsafeCode(f"zip entry {seen[parent]!r} is a file, and {seen[key]!r} puts it as a directory; "
                                 "rebuild the zip", field="code")
            parent = parent.rpartition("/")[0]
    # Read every entry once: catches CRC errors and sizes that lie about themselves.
    actual = 0
    for info in infos:
        if info.is_dir():
            continue
        try:
            with zf.open(info) as f:
                while chunk := f.read(1 << 16):
                    actual += len(chunk)
                    if actual > limits.max_unpacked_bytes:
                        raise UnsafeCode(f"the zip inflates to more than {limits.max_unpacked_bytes} bytes; "
                                         "refused as a zip bomb", field="code")
        except (zipfile.BadZipFile, OSError, EOFError) as exc:
            raise UnsafeCode(f"zip entry {info.filename!r} is corrupt ({exc}); rebuild the zip", field="code") from None
    if actual > BOMB_MIN_BYTES and actual > BOMB_RATIO * len(data):
        raise UnsafeCode(f"the package inflates {actual // len(data)}x ({len(data)} bytes to {actual}); "
                         f"refused as a zip bomb (the limit is {BOMB_RATIO}x for packages over "
                         f"{BOMB_MIN_BYTES} bytes unpacked)", field="code")
    return PackageInfo(digest=sha256(data), size=len(data), files=len(names), unpacked_size=actual,
                       names=tuple(sorted(names)))


def zip_single_file(filename: str, source: bytes) -> bytes:
    """A deterministic one-file zip (fixed timestamp), so the same source gets the same digest."""
    name = check_entry_name(filename)
    if "/" in name or not name.endswith(SOURCE_SUFFIXES):
        raise ValidationError(f"filename {filename!r} must be a plain file name ending in one of "
                              f"{', '.join(SOURCE_SUFFIXES)}", field="filename")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
        info.external_attr = (stat.S_IFREG | 0o644) << 16
        info.compress_type = zipfile.ZIP_DEFLATED
        zf.writestr(info, source)
    return buf.getvalue()


def zip_directory(root: Path) -> bytes:
    """Zip a directory deterministically (sorted, fixed timestamps); used by the CLI's deploy."""
    root = Path(root)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(root.rglob("*")):
            rel = path.relative_to(root).as_posix()
            if "__pycache__" in path.parts or path.name.startswith(".") or path.is_symlink():
                continue
            if path.is_file():
                info = zipfile.ZipInfo(rel, date_time=(1980, 1, 1, 0, 0, 0))
                # the executable bit survives: a custom runtime's bootstrap must stay runnable
                mode = 0o755 if path.stat().st_mode & 0o111 else 0o644
                info.external_attr = (stat.S_IFREG | mode) << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                zf.writestr(info, path.read_bytes())
    return buf.getvalue()


def handler_file_present(names: tuple[str, ...], handler: str, runtime: str) -> bool:
    if runtime.startswith("provided"):   # the executable the instance runs (runtimes/provided/bootstrap.py)
        return "bootstrap" in names or handler in names
    module = handler.rsplit(".", 1)[0]
    suffixes = (".py",) if runtime.startswith("python") else (".js", ".mjs", ".cjs")
    return any(f"{module}{s}" in names for s in suffixes) or (
        runtime.startswith("python") and f"{module}/__init__.py" in names)


def unpack(data: bytes, dest: Path, limits: Limits, *, compile_python: bool = True) -> Path:
    """Unpack a checked zip into ``dest`` atomically, byte-compile it and make it read-only.

    Safe to call concurrently for the same ``dest``: the loser of the rename discards its copy.
    """
    dest = Path(dest)
    if dest.exists():
        return dest
    inspect_zip(data, limits)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        executable = set()
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            for info in zf.infolist():
                key = normalised(check_entry_name(info.filename))
                if not key:
                    continue
                target = tmp / key
                if not target.resolve().is_relative_to(tmp.resolve()):
                    raise UnsafeCode(f"zip entry {info.filename!r} escapes the package", field="code")
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(target, "xb") as out:
                    shutil.copyfileobj(src, out, 1 << 16)
                # Executable files stay executable; a top-level ``bootstrap`` (the custom runtime's entry
                # point, which an online edit or a Windows zip cannot mark) always is.
                if (info.external_attr >> 16) & 0o111 or info.filename == "bootstrap":
                    executable.add(str(target))
        if compile_python:
            # Byte-compile once here so no instance pays for it (and instances run with
            # PYTHONDONTWRITEBYTECODE on a read-only tree). Syntax errors are left for the runtime
            # to report as Runtime.UserCodeSyntaxError on first load.
            compileall.compile_dir(str(tmp), quiet=2, workers=1)
        for dirpath, dirnames, filenames in os.walk(tmp):
            for f in filenames:
                path = os.path.join(dirpath, f)
                os.chmod(path, 0o555 if path in executable else 0o444)
            for d in dirnames:
                os.chmod(os.path.join(dirpath, d), 0o555)
        os.chmod(tmp, 0o555)
        try:
            os.rename(tmp, dest)
        except OSError:
            if not dest.exists():
                raise
            _rmtree(tmp)
    except BaseException:
        _rmtree(tmp)
        raise
    return dest


def _rmtree(path: Path) -> None:
    if not path.exists():
        return
    for dirpath, dirnames, _ in os.walk(path):
        os.chmod(dirpath, 0o755)
        for d in dirnames:
            os.chmod(os.path.join(dirpath, d), 0o755)
    shutil.rmtree(path, ignore_errors=True)


def remove_tree(path: Path) -> None:
    """Remove an unpacked (read-only) tree."""
    _rmtree(Path(path))


def merge_layers(dirs: list, root) -> "Path":
    """The directory an instance sees as ``/opt``: unpacked layer packages in order, a later one's files
    replacing an earlier one's (Lambda's rule). One layer is its own directory; several are merged once
    per ordered list, under ``root/layers-<sha256 of the list>``, with hard links into the unpacked
    ones (copies where links fail), through a temporary directory and a rename. The caller serialises
    concurrent merges of the same list (a lock); a merge that loses a race keeps the winner's."""
    import hashlib
    import os
    import shutil
    import uuid
    from pathlib import Path
    dirs = [Path(d) for d in dirs]
    if len(dirs) == 1:
        return dirs[0]
    root = Path(root)
    dest = root / ("layers-" + hashlib.sha256(",".join(d.name for d in dirs).encode()).hexdigest())
    if dest.exists():
        return dest
    tmp = root / f".{dest.name}.{uuid.uuid4().hex[:8]}"
    try:
        for src in dirs:
            for top, _, files in os.walk(src):
                rel = Path(top).relative_to(src)
                (tmp / rel).mkdir(parents=True, exist_ok=True)
                for f in files:
                    target = tmp / rel / f
                    if target.exists() or target.is_symlink():
                        target.unlink()
                    try:
                        os.link(Path(top) / f, target)
                    except OSError:
                        shutil.copy2(Path(top) / f, target)
        try:
            os.rename(tmp, dest)
        except OSError:
            if not dest.exists():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest
