"""An append-only journal in memory-mapped files: what a killed process leaves in the page cache.

The records' journal (see :mod:`.records`): each answered request's record is appended here
before the answer goes out. Appending is a copy into a shared file mapping, no system call: the
data is in the page cache at once, which outlives the process (``kill -9`` included), and the
appending thread (the edge's event loop) never lets go of the GIL for it. A ``write(2)`` per
record did, and handing the GIL back and forth cost the edge about a quarter of its throughput
at 16 connections.

Segments are files of ``segment_bytes``, reserved on disk when created (``posix_fallocate``: a
full disk is an error then, never a SIGBUS on a later write into a sparse page), named by a
growing number. A position is ``(segment, offset)``. Lines are JSON documents (no raw newline or
NUL); a segment's unwritten tail is zeros, and a line without its newline (a process killed in
the middle of the copy, before anything was answered) is ignored. Not fsynced: a power loss may
lose what the kernel had not written back.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterator
from pathlib import Path

SUFFIX = ".journal"


class Journal:
    """Not thread-safe: its owner serialises :meth:`append` (records.RecordStore holds a lock)."""

    def __init__(self, directory: Path, *, segment_bytes: int = 8 << 20):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.segment_bytes = segment_bytes
        existing = self.segments()
        self._next = (existing[-1] + 1) if existing else 1
        self.current = 0
        self._mm: mmap.mmap | None = None
        self._released = 0
        self._pos = 0
        self._size = 0

    def segments(self) -> list[int]:
        return sorted(int(p.name[:-len(SUFFIX)]) for p in self.dir.glob(f"*{SUFFIX}") if p.name[:-len(SUFFIX)].isdigit())

    def _path(self, n: int) -> Path:
        return self.dir / f"{n:012d}{SUFFIX}"

    def _open(self, need: int) -> None:
        size = max(self.segment_bytes, need)
        n = self._next
        fd = os.open(self._path(n), os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.posix_fallocate(fd, 0, size)
            mm = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except BaseException:
            os.close(fd)
            self._path(n).unlink(missing_ok=True)
            raise
        os.close(fd)
        if self._mm is not None:
            self._mm.close()
        self._mm, self._pos, self._size, self.current = mm, 0, size, n
        self._next = n + 1

    def append(self, line: bytes) -> tuple[int, int]:
        """Append one line (a newline is added); returns the position just after it."""
        n = len(line) + 1
        if self._mm is None or self._pos + n > self._size:
            self._open(n)
        end = self._pos + n
        self._mm[self._pos:end - 1] = line
        self._mm[end - 1:end] = b"\n"
        self._pos = end
        return self.current, end

    def read_from(self, position: tuple[int, int] | None) -> Iterator[bytes]:
        """The complete lines after ``position`` (None: from the start), oldest first."""
        seg0, off0 = position or (0, 0)
        for n in self.segments():
            if n < seg0:
                continue
            data = self._path(n).read_bytes()
            start = off0 if n == seg0 else 0
            end = data.find(b"\x00", start)
            data = data[start:end if end >= 0 else len(data)]
            lines = data.split(b"\n")
            yield from (line for line in lines[:-1] if line)   # the last piece has no newline

    def release_before(self, position: tuple[int, int]) -> None:
        """Delete the segments wholly before ``position`` (their lines are stored elsewhere).
        Called after every batch: it lists the directory only when ``position`` reached a new segment."""
        if position[0] <= self._released:
            return
        for n in self.segments():
            if n < position[0] and n != self.current:
                self._path(n).unlink(missing_ok=True)
        self._released = position[0]

    def release_all(self) -> None:
        """Delete every segment (all of it is stored elsewhere); appends go to a new one."""
        self.close()
        for n in self.segments():
            self._path(n).unlink(missing_ok=True)

    def close(self) -> None:
        if self._mm is not None:
            self._mm.close()
            self._mm = None
            self._size = self._pos = 0
