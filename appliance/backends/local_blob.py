"""Content-addressed code store on local disk (embedded mode)."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

from appliance.core.errors import CodeNotFound, ValidationError

DIGEST_RE = re.compile(r"[0-9a-f]{64}\Z")


class LocalBlobStore:
    """Files named by their sha256 under ``root/ab/abcdef...``.

    Writes go to a temporary file that is fsynced and renamed into place, so a reader never sees
    a partial package and a crash mid-upload leaves nothing behind but a temp file.
    """

    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, digest: str) -> Path:
        if not DIGEST_RE.match(digest):
            raise ValidationError(f"not a sha256 digest: {digest!r}", field="digest")
        return self.root / digest[:2] / digest

    def put(self, digest: str, data: bytes) -> None:
        path = self._path(digest)
        if path.exists():
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    def get(self, digest: str) -> bytes:
        try:
            return self._path(digest).read_bytes()
        except FileNotFoundError:
            raise CodeNotFound(f"no code package with sha256 {digest}") from None

    def exists(self, digest: str) -> bool:
        return self._path(digest).exists()

    def digests(self) -> set[str]:
        """Every package stored."""
        return {p.name for p in self.root.glob("??/*") if DIGEST_RE.match(p.name)}

    def remove_partial(self) -> int:
        """Delete the temporary files of writes a killed process left; returns how many."""
        n = 0
        for p in self.root.glob("??/.tmp-*"):
            p.unlink(missing_ok=True)
            n += 1
        return n

    def delete(self, digest: str) -> None:
        try:
            self._path(digest).unlink()
        except FileNotFoundError:
            pass
