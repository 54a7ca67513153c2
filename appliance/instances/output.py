"""Instances' own output (stdout and stderr) into log files of bounded size.

An instance writes to a pipe, not to a file: one thread here reads every instance's pipe and
appends to ``<log dir>/<instance id>.log``. When that file reaches ``max_bytes`` it becomes
``<id>.log.1`` (replacing the previous one) and a new file starts, so an instance keeps at most
twice ``max_bytes`` on disk however much it prints (a function wrote 1 GB to stdout in 1.5 s,
straight into a file nobody capped). When an instance ends its files stay for a while, so a crash
can be read ("see the instance log"); only the last ``keep_ended`` ended instances keep theirs.

Why a pipe and a reader rather than ``RLIMIT_FSIZE`` or a sweeper: the size limit would also cut
the function's own files in its ``/tmp`` (and kill it with SIGXFSZ), and a sweeper that truncates
now and then bounds nothing between two sweeps.
"""

from __future__ import annotations

import collections
import logging
import os
import selectors
import threading
from pathlib import Path

log = logging.getLogger("appliance.instances.output")

READ_BYTES = 1 << 16


class _Sink:
    __slots__ = ("instance_id", "fd", "file", "size")

    def __init__(self, instance_id: str, fd: int):
        self.instance_id = instance_id
        self.fd = fd
        self.file = None
        self.size = 0


class OutputPump:
    def __init__(self, log_dir: Path, *, max_bytes: int = 10 << 20, keep_ended: int = 32):
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.keep_ended = keep_ended
        self._lock = threading.Lock()
        self._sel = selectors.DefaultSelector()
        self._sinks: dict[int, _Sink] = {}
        self._names: dict[str, _Sink] = {}
        self._ended: collections.deque[str] = collections.deque()
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._sel.register(self._wake_r, selectors.EVENT_READ, None)
        self._closed = False
        self._thread = threading.Thread(target=self._run, daemon=True, name="instance-output")
        self._thread.start()

    def path(self, instance_id: str) -> Path:
        return self.log_dir / f"{instance_id}.log"

    def open(self, instance_id: str) -> int:
        """A pipe for the instance's output; returns its write end (the caller gives it to the
        process and closes its own copy)."""
        r, w = os.pipe2(os.O_CLOEXEC)
        os.set_blocking(r, False)
        sink = _Sink(instance_id, r)
        with self._lock:
            self._sinks[r] = sink
            self._names[instance_id] = sink
            self._sel.register(r, selectors.EVENT_READ, sink)
        os.write(self._wake_w, b"x")
        return w

    def rename(self, old_id: str, new_id: str) -> None:
        """The output of ``old_id`` (a spare) is ``new_id``'s from now on, files included."""
        with self._lock:
            sink = self._names.pop(old_id, None)
            if sink is not None:
                sink.instance_id = new_id
                self._names[new_id] = sink
            for suffix in ("", ".1"):   # an open file follows its rename
                try:
                    os.replace(self.log_dir / f"{old_id}.log{suffix}", self.log_dir / f"{new_id}.log{suffix}")
                except OSError:
                    pass

    def remove(self, instance_id: str) -> None:
        """Delete an instance's log files now."""
        for suffix in ("", ".1"):
            try:
                (self.log_dir / f"{instance_id}.log{suffix}").unlink()
            except OSError:
                pass

    def _run(self) -> None:
        while not self._closed:
            for key, _ in self._sel.select(1.0):
                sink = key.data
                if sink is None:
                    try:
                        os.read(self._wake_r, 4096)
                    except BlockingIOError:
                        pass
                    continue
                self._pump(sink)

    def _pump(self, sink: _Sink) -> None:
        try:
            data = os.read(sink.fd, READ_BYTES)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._end(sink)
            return
        with self._lock:
            try:
                if sink.file is None:
                    sink.file = open(self.path(sink.instance_id), "ab", buffering=0)
                    sink.size = sink.file.tell()
                if sink.size + len(data) > self.max_bytes and sink.size:
                    sink.file.close()
                    os.replace(self.path(sink.instance_id), self.log_dir / f"{sink.instance_id}.log.1")
                    sink.file = open(self.path(sink.instance_id), "ab", buffering=0)
                    sink.size = 0
                sink.file.write(data[: self.max_bytes])
                sink.size += min(len(data), self.max_bytes)
            except OSError as exc:
                log.warning("event=instance_output_failed instance=%s error=%r", sink.instance_id, str(exc))

    def _end(self, sink: _Sink) -> None:
        with self._lock:
            try:
                self._sel.unregister(sink.fd)
            except (KeyError, ValueError):
                pass
            os.close(sink.fd)
            self._sinks.pop(sink.fd, None)
            if self._names.get(sink.instance_id) is sink:
                del self._names[sink.instance_id]
            if sink.file is not None:
                sink.file.close()
                sink.file = None
            self._ended.append(sink.instance_id)
            old = [self._ended.popleft() for _ in range(len(self._ended) - self.keep_ended)]
        for instance_id in old:
            if instance_id not in self._names:
                self.remove(instance_id)

    def live(self) -> int:
        with self._lock:
            return len(self._sinks)

    def close(self) -> None:
        self._closed = True
        os.write(self._wake_w, b"x")
        self._thread.join(5)
        with self._lock:
            for sink in list(self._sinks.values()):
                try:
                    self._sel.unregister(sink.fd)
                except (KeyError, ValueError):
                    pass
                os.close(sink.fd)
                if sink.file is not None:
                    sink.file.close()
            self._sinks.clear()
        self._sel.close()
        os.close(self._wake_r)
        os.close(self._wake_w)
