"""How a runtime process comes to exist on this host.

``Launcher`` is the seam between the local scheduler (which decides *that* an instance starts and
tracks it) and the mechanics of *how*: a plain child process here; a sandboxed child forked from a
runtime zygote in ``appliance.instances.sandbox``. A launcher returns a handle with ``pid``, ``returncode``,
``wait(timeout)`` and ``signal(sig)``, the address the instance listens on, and the phases (ms)
it measured.
"""

from __future__ import annotations

import json
import os
import resource
import select
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from appliance.core.errors import PlacementFailed
from appliance.core.model import InstanceSpec
from appliance.instances.output import OutputPump

#: Address space allowed beyond the function's memory_mb: the interpreter, its libraries and
#: thread stacks, which Lambda does not count against the function either.
AS_HEADROOM_MB = 192
#: Variables passed through from the appliance's own environment; nothing else leaks in.
PASS_ENV = ("PATH", "LANG", "LC_ALL", "TZ", "SYSTEMROOT")


@dataclass(frozen=True)
class LaunchRequest:
    spec: InstanceSpec
    code_dir: Path
    instance_id: str
    host: str = "127.0.0.1"
    #: Contract variables of the platform's own settings (``FAAS_REGION``, ``FAAS_ACCOUNT_ID``).
    platform_env: dict[str, str] = field(default_factory=dict)
    #: The function's layers merged (appliance.backends.local_scheduler.CodeCache.ensure_layers): the
    #: sandbox mounts it at /opt; a plain process is told where it is (FAAS_LAYERS_DIR).
    layers_dir: Path | None = None


class Launcher(Protocol):
    def launch(self, req: LaunchRequest, deadline: float) -> tuple[object, str, dict[str, float]]: ...

    def oom_killed(self, handle: object) -> bool | None:
        """Whether the instance was killed for memory; None when the launcher cannot tell."""

    def close(self) -> None: ...


def runtime_env(req: LaunchRequest, *, port: int | None = 0, socket_path: str | None = None) -> dict[str, str]:
    """The environment of the runtime contract (runtimes/README.md) for one instance."""
    spec = req.spec
    env = {k: os.environ[k] for k in PASS_ENV if k in os.environ}
    env.update(spec.environment)
    env.update({
        "FAAS_HANDLER": spec.handler,
        "FAAS_CODE_DIR": str(req.code_dir),
        "FAAS_HOST": req.host,
        "FAAS_FUNCTION_NAME": spec.function,
        # a published version's instances say its number, as Lambda's do; $LATEST says its code version
        "FAAS_FUNCTION_VERSION": str(getattr(spec, "published", 0) or spec.version),
        "FAAS_MEMORY_MB": str(spec.memory_mb),
        "FAAS_TIMEOUT_S": str(spec.timeout_s),
        "FAAS_MAX_INFLIGHT": str(spec.concurrency),
        "FAAS_INSTANCE_ID": req.instance_id,
        **req.platform_env,
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONUNBUFFERED": "1",
        # One malloc arena per thread reserves 64 MB of address space each; keep it bounded so
        # the address-space limit measures memory the function uses.
        "MALLOC_ARENA_MAX": "2",
    })
    if req.layers_dir is not None:
        env["FAAS_LAYERS_DIR"] = str(req.layers_dir)
    if socket_path:
        env["FAAS_SOCKET"] = socket_path
    else:
        env["FAAS_PORT"] = str(port or 0)
    return env


class ProcessHandle:
    def __init__(self, popen: subprocess.Popen):
        self.popen = popen
        self.pid = popen.pid
        self._group_killed = False

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    def wait(self, timeout: float | None) -> int | None:
        try:
            rc = self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        if not self._group_killed:
            # What it started (in its session, the group it leads) dies with it.
            self._group_killed = True
            self.signal(signal.SIGKILL)
        return rc

    def signal(self, sig: int) -> None:
        try:
            os.killpg(self.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def wait_readable(fd, timeout: float | None) -> bool:
    """Whether ``fd`` (an int or a file object) became readable within ``timeout`` seconds.

    poll(), not select(): the appliance holds a descriptor per client connection, and select()
    fails outright on descriptors above 1023.
    """
    p = select.poll()
    p.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)
    return bool(p.poll(None if timeout is None else max(0, int(timeout * 1000))))


def read_ready_line(fd: int, deadline: float, handle) -> dict:
    """Read the bootstrap's ``{"port": N}`` line from the ready pipe, up to ``deadline``."""
    buf = b""
    try:
        while b"\n" not in buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                handle.signal(signal.SIGKILL)
                raise PlacementFailed("the runtime did not start listening before the start deadline")
            if not wait_readable(fd, min(remaining, 0.5)):
                if handle.returncode is not None:
                    raise PlacementFailed(f"the runtime exited with status {handle.returncode} while starting; "
                                          "see the instance log")
                continue
            chunk = os.read(fd, 4096)
            if not chunk:
                raise PlacementFailed(f"the runtime exited with status {handle.wait(1.0)} while starting; "
                                      "see the instance log")
            buf += chunk
    finally:
        os.close(fd)
    try:
        return json.loads(buf.split(b"\n", 1)[0])
    except ValueError:
        raise PlacementFailed(f"the runtime wrote an unreadable ready line: {buf[:200]!r}") from None


class ProcessLauncher:
    """Plain child processes with resource limits: no namespaces. Used where the sandbox is
    unavailable and as the measured baseline for it."""

    def __init__(self, runtimes_dir: Path, log_dir: Path, *, log_bytes: int = 10 << 20):
        self.runtimes_dir = Path(runtimes_dir)
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        #: Instances' stdout and stderr, into log files of bounded size (see output.py).
        self.output = OutputPump(self.log_dir, max_bytes=log_bytes)

    def command(self, spec: InstanceSpec) -> list[str]:
        cmd = bootstrap_path(self.runtimes_dir, spec.runtime)
        if spec.runtime.startswith("nodejs"):
            cmd.insert(1, f"--max-old-space-size={spec.memory_mb}")
        return cmd

    def launch(self, req: LaunchRequest, deadline: float):
        spec = req.spec
        r, w = os.pipe()
        env = runtime_env(req, port=0)
        env["FAAS_READY_FD"] = str(w)
        limit_as = spec.runtime.startswith("python")
        memory_bytes = (spec.memory_mb + AS_HEADROOM_MB) << 20

        def limits() -> None:  # runs in the child between fork and exec
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
            resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024))
            if limit_as:
                resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))

        t0 = time.monotonic()
        out = self.output.open(req.instance_id)
        try:
            popen = subprocess.Popen(self.command(spec), env=env, cwd=str(req.code_dir), stdin=subprocess.DEVNULL,
                                     stdout=out, stderr=subprocess.STDOUT, pass_fds=(w,),
                                     start_new_session=True, preexec_fn=limits)
        except BaseException:
            os.close(r)
            raise
        finally:
            os.close(w)
            os.close(out)
        handle = ProcessHandle(popen)
        ready = read_ready_line(r, deadline, handle)
        phases = {"sandbox": 0.0, "runtime_init": round((time.monotonic() - t0) * 1000, 3)}
        return handle, f"{req.host}:{ready['port']}", phases

    def oom_killed(self, handle) -> bool | None:
        return None  # no memory cgroup here: the scheduler reads an unexplained SIGKILL as OOM

    def close(self) -> None:
        self.output.close()


def bootstrap_path(runtimes_dir: Path, runtime: str) -> list[str]:
    """The command that runs a runtime's bootstrap."""
    if runtime.startswith("python"):
        # -S: no site module, so none of the interpreter's site-packages (the bootstrap narrows sys.path too).
        return [os.environ.get("APPLIANCE_PYTHON", "python3"), "-S", "-X", "frozen_modules=on",
                str(runtimes_dir / "python" / "bootstrap.py")]
    if runtime.startswith("nodejs"):
        return [os.environ.get("APPLIANCE_NODE", "node"), str(runtimes_dir / "node" / "bootstrap.js")]
    if runtime.startswith("provided"):  # the Runtime API server that runs the package's own bootstrap
        return [os.environ.get("APPLIANCE_PYTHON", "python3"), "-I", str(runtimes_dir / "provided" / "bootstrap.py")]
    raise PlacementFailed(f"no bootstrap for runtime {runtime!r}")
