"""Per-instance memory and pids cgroups, on cgroup v1 or v2, whichever the host has.

Why cgroups when there are rlimits: RLIMIT_AS bounds address space, not memory (a runtime reserves far
more than it touches, and memory an instance maps through /tmp or page cache is not counted at all), and
RLIMIT_NPROC counts per uid. A memory cgroup counts the pages an instance really uses, including its
tmpfs, and the kernel kills it when it goes over ``memory_mb``; the kill is recorded in the cgroup
(``oom_kill`` in ``memory.oom_control`` on v1, in ``memory.events`` on v2), which is how the platform
tells "killed for memory" from any other SIGKILL. A pids cgroup stops a fork bomb at a fixed number of
tasks whatever uid they run as.

Moving a process into a cgroup v1 waits for an RCU grace period (5-15 ms here), so the launcher
creates the cgroup of the *next* instance ahead of time and the zygote's spare child joins it while
it waits (``set_limits`` is applied when the instance is known); a cold start then pays nothing for it.
Those cgroups are created while the previous instance starts, already limited for its memory size, so
a launch of the same size writes no limit either.

Layout: ``<the appliance's own cgroup>/faas-<pid>/<instance>`` in each hierarchy. On v1 the memory and
pids controllers are separate hierarchies; on v2 one directory holds both, and since v2 forbids
processes in a cgroup that delegates controllers, the appliance first moves itself into a leaf
``<own>/appliance`` when its own cgroup is not empty of other children (this is what a systemd unit
with ``Delegate=yes`` expects). Anything that cannot be set up makes :func:`detect` return ``None``
with the reason, and the sandbox then relies on rlimits alone.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import time
from pathlib import Path

log = logging.getLogger("appliance.instances.cgroups")

ROOT = Path("/sys/fs/cgroup")


def _own_paths(proc_cgroup: str) -> dict[str, str]:
    """Controller name (or "" for the v2 unified hierarchy) -> this process's cgroup path."""
    out = {}
    for line in proc_cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":
            out[""] = path
        for c in controllers.split(","):
            if c:
                out[c] = path
    return out


def _write(path: Path, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def _read_kv(path: Path) -> dict[str, int]:
    out = {}
    try:
        for line in path.read_text().splitlines():
            k, _, v = line.partition(" ")
            if v.strip().lstrip("-").isdigit():
                out[k] = int(v)
    except OSError:
        pass
    return out


class InstanceCgroup:
    """The cgroup directories of one instance."""

    def __init__(self, version: int, dirs: list[Path]):
        self.version = version
        self.dirs = dirs
        self._limits: tuple[int, int | None] | None = None  # what set_limits last wrote

    @property
    def procs_files(self) -> list[str]:
        return [str(d / "cgroup.procs") for d in self.dirs]

    def set_limits(self, memory_bytes: int, pids_max: int | None) -> None:
        """Write the limits; nothing when they are those written last (a stocked cgroup is limited ahead
        for the memory size launched last, which saves the writes on the cold start)."""
        if self._limits == (memory_bytes, pids_max):
            return
        if self.version == 1:
            mem = self.dirs[0]
            files = ["memory.limit_in_bytes"]
            if (mem / "memory.memsw.limit_in_bytes").exists():  # no escape into swap
                files.append("memory.memsw.limit_in_bytes")
            if self._limits is not None and memory_bytes > self._limits[0]:
                files.reverse()  # the memory limit may never exceed memory+swap's
            for name in files:
                _write(mem / name, str(memory_bytes))
            if len(self.dirs) > 1 and pids_max is not None:
                _write(self.dirs[1] / "pids.max", str(pids_max))
        else:
            d = self.dirs[0]
            _write(d / "memory.max", str(memory_bytes))
            if (d / "memory.swap.max").exists():
                _write(d / "memory.swap.max", "0")
            if (d / "pids.max").exists() and pids_max is not None:
                _write(d / "pids.max", str(pids_max))
        self._limits = (memory_bytes, pids_max)

    def oom_killed(self) -> bool:
        """Whether the kernel killed a task of this cgroup for going over its memory limit."""
        mem = self.dirs[0]
        if self.version == 2:
            return _read_kv(mem / "memory.events").get("oom_kill", 0) > 0
        control = _read_kv(mem / "memory.oom_control")
        if "oom_kill" in control:
            return control["oom_kill"] > 0
        try:  # kernels before 4.13 have no oom_kill counter: hitting the limit is the best sign left
            return int((mem / "memory.failcnt").read_text()) > 0
        except (OSError, ValueError):
            return False

    def kill_tasks(self) -> int:
        """SIGKILL every task still in the cgroup: whatever an instance started dies with it
        (``cgroup.kill`` where the kernel has it, else each pid of ``cgroup.procs``)."""
        killed = 0
        for d in self.dirs:
            kill = d / "cgroup.kill"
            if self.version == 2 and kill.exists():
                try:
                    _write(kill, "1")
                    killed += 1
                    continue
                except OSError:
                    pass
            try:
                pids = [int(x) for x in (d / "cgroup.procs").read_text().split()]
            except (OSError, ValueError):
                continue
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                    killed += 1
                except OSError:
                    pass
        return killed

    def remove(self, wait_s: float = 2.0) -> bool:
        """Remove the directories once their last task is gone (tasks left behind by the instance
        are killed); False if some are still busy."""
        end = time.monotonic() + wait_s
        pending = list(self.dirs)
        killed = False
        while pending:
            d = pending[0]
            try:
                d.rmdir()
                pending.pop(0)
            except FileNotFoundError:
                pending.pop(0)
            except OSError as exc:
                if exc.errno != errno.EBUSY or time.monotonic() > end:
                    return False
                if not killed:
                    killed = True
                    self.kill_tasks()
                time.sleep(0.01)  # the pid namespace's last tasks are still being torn down
        return True


class CgroupManager:
    def __init__(self, version: int, bases: list[Path]):
        self.version = version
        #: v1: [memory base, pids base (optional)]; v2: [base]
        self.bases = bases

    def describe(self) -> str:
        return f"cgroup v{self.version} at {', '.join(str(b) for b in self.bases)}"

    def create(self, name: str, memory_bytes: int | None = None, pids_max: int | None = None) -> InstanceCgroup:
        """New instance cgroups; limits now, or later with ``set_limits`` (before anything runs in it)."""
        dirs = []
        try:
            for base in self.bases:
                d = base / name
                d.mkdir()
                dirs.append(d)
            cg = InstanceCgroup(self.version, dirs)
            if memory_bytes is not None:
                cg.set_limits(memory_bytes, pids_max)
        except OSError:
            InstanceCgroup(self.version, dirs).remove(0)
            raise
        return cg

    def close(self) -> None:
        for base in self.bases:
            try:
                base.rmdir()
            except OSError:
                pass


def _remove_stale(parent: Path) -> None:
    """Instance cgroups left by an appliance that died without closing (its pid is gone)."""
    for base in parent.glob("faas-*"):
        pid = base.name[5:]
        if not pid.isdigit() or os.path.exists(f"/proc/{pid}"):
            continue
        for child in base.iterdir():
            if child.is_dir():
                try:
                    child.rmdir()
                except OSError:
                    pass
        try:
            base.rmdir()
        except OSError:
            pass


def detect(root: Path = ROOT, proc_cgroup: str | None = None) -> tuple[CgroupManager | None, str]:
    """A manager for this host's cgroups, or None and why not."""
    if proc_cgroup is None:
        try:
            proc_cgroup = Path("/proc/self/cgroup").read_text()
        except OSError as exc:
            return None, f"cannot read /proc/self/cgroup: {exc}"
    own = _own_paths(proc_cgroup)
    name = f"faas-{os.getpid()}"
    if "memory" in own and (root / "memory").is_dir():
        try:
            mem = root / "memory" / own["memory"].lstrip("/") / name
            _remove_stale(mem.parent)
            mem.mkdir(exist_ok=True)
            bases = [mem]
            if "pids" in own and (root / "pids").is_dir():
                pids = root / "pids" / own["pids"].lstrip("/") / name
                _remove_stale(pids.parent)
                pids.mkdir(exist_ok=True)
                bases.append(pids)
            return CgroupManager(1, bases), ""
        except OSError as exc:
            return None, f"cannot create a memory cgroup (v1) under {root / 'memory'}: {exc}"
    unified = root if (root / "cgroup.controllers").exists() else None
    if unified is None or "" not in own:
        return None, "no memory cgroup controller is mounted"
    try:
        available = (unified / "cgroup.controllers").read_text().split()
        if "memory" not in available:
            return None, "the cgroup v2 hierarchy has no memory controller"
        own_dir = unified / own[""].lstrip("/")
        wanted = " ".join(f"+{c}" for c in ("memory", "pids") if c in available)
        try:
            _write(own_dir / "cgroup.subtree_control", wanted)
        except OSError as exc:
            if exc.errno != errno.EBUSY:
                raise
            leaf = own_dir / "appliance"  # v2: no processes in a cgroup that delegates controllers
            leaf.mkdir(exist_ok=True)
            for pid in (own_dir / "cgroup.procs").read_text().split():
                try:
                    _write(leaf / "cgroup.procs", pid)
                except OSError:
                    pass
            _write(own_dir / "cgroup.subtree_control", wanted)
        base = own_dir / name
        _remove_stale(own_dir)
        base.mkdir(exist_ok=True)
        _write(base / "cgroup.subtree_control", wanted)
        return CgroupManager(2, [base]), ""
    except OSError as exc:
        return None, f"cannot delegate memory to instance cgroups (v2) under {unified}: {exc}"
