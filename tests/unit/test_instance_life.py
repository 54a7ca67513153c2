"""The platform decides an instance's life: an instance that ignores SIGTERM, or accepts a drain
and keeps running, is killed after a grace period; its process group goes with it."""

import signal
import subprocess
import sys

from appliance.backends import local_scheduler
from appliance.backends.local_scheduler import LocalScheduler, _Proc
from appliance.core.model import Instance, InstanceSpec
from appliance.instances.process_launcher import ProcessHandle
from tests.waiting import wait_for

DEAF = ("import os, signal, subprocess, sys, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(3600)'])\n"
        "print('up', flush=True)\ntime.sleep(3600)\n")


def started(sched: LocalScheduler, timeout_s: int = 1):
    popen = subprocess.Popen([sys.executable, "-c", DEAF], stdout=subprocess.PIPE, start_new_session=True)
    assert popen.stdout.readline() == b"up\n"
    spec = InstanceSpec(function="f", version=1, digest="0" * 64, runtime="python3.11", handler="index.handler",
                        memory_mb=128, timeout_s=timeout_s, concurrency=1, environment={})
    inst = Instance(id="i-1", function="f", version=1, address="127.0.0.1:9", concurrency=1)
    proc = _Proc(instance=inst, handle=ProcessHandle(popen), spec=spec)
    sched._procs[inst.id] = proc
    return inst, proc, popen


def group_alive(pgid: int) -> bool:
    try:
        import os
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def test_an_instance_ignoring_sigterm_is_killed_with_its_children(monkeypatch):
    monkeypatch.setattr(local_scheduler, "STOP_GRACE_S", 0.2)
    sched = LocalScheduler(registry=None, blobs=None, code_cache=None, launcher=None, client=None)
    inst, proc, popen = started(sched, timeout_s=1)
    sched.stop(inst, graceful=True)
    assert popen.wait(30) == -signal.SIGKILL
    proc.handle.wait(0)   # what the watcher does once it ends: the rest of its group goes too
    wait_for(lambda: not group_alive(popen.pid), 10, message="its child to die with it")


def test_an_instance_that_accepted_a_drain_but_keeps_running_is_killed(monkeypatch):
    monkeypatch.setattr(local_scheduler, "DRAIN_EXIT_S", 0.2)
    sched = LocalScheduler(registry=None, blobs=None, code_cache=None, launcher=None, client=None)
    inst, proc, popen = started(sched)
    sched.mark_stopping(inst.id, "drained")
    assert popen.wait(30) == -signal.SIGKILL
    proc.handle.wait(0)
    wait_for(lambda: not group_alive(popen.pid), 10, message="its child to die with it")
