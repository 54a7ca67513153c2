"""An instance's own output goes to log files of bounded size: rotated once past the cap, and
deleted some time after the instance ends (the last few ended instances keep theirs)."""

import os
import subprocess
import sys

import pytest

from appliance.instances.output import OutputPump
from tests.waiting import wait_for

FLOOD = "import os\nfor _ in range(200):\n    os.write(1, b'x' * 65535 + b'\\n')\nos.write(1, b'the end\\n')\n"


@pytest.fixture
def pump(tmp_path):
    p = OutputPump(tmp_path / "logs", max_bytes=1 << 20, keep_ended=2)
    yield p
    p.close()


def run(pump, instance_id, code=FLOOD):
    out = pump.open(instance_id)
    try:
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=out, stderr=subprocess.STDOUT)
    finally:
        os.close(out)
    assert proc.wait(60) == 0
    wait_for(lambda: instance_id not in pump._names, 20, message="the pipe drained")


def on_disk(pump, instance_id):
    return {p.name: p.stat().st_size for p in pump.log_dir.glob(f"{instance_id}.log*")}


def test_a_flood_of_output_keeps_at_most_two_capped_files(pump):
    run(pump, "i-1")   # 12.5 MiB written
    files = on_disk(pump, "i-1")
    assert set(files) == {"i-1.log", "i-1.log.1"}
    assert all(size <= 1 << 20 for size in files.values())
    assert pump.path("i-1").read_bytes().endswith(b"the end\n")   # the newest output is kept


def test_only_the_last_ended_instances_keep_their_logs(pump):
    for i in range(4):
        run(pump, f"e-{i}", "print('bye')")
    assert sorted(p.name for p in pump.log_dir.iterdir()) == ["e-2.log", "e-3.log"]


def test_a_spares_output_becomes_the_instances(pump):
    out = pump.open("spare-1")
    try:
        proc = subprocess.Popen([sys.executable, "-c", "import sys, time\nprint('spare', flush=True)\n"
                                 "sys.stdin.readline()\nprint('instance', flush=True)\n"],
                                stdout=out, stdin=subprocess.PIPE)
    finally:
        os.close(out)
    wait_for(lambda: pump.path("spare-1").exists() and pump.path("spare-1").read_bytes() == b"spare\n", 20)
    pump.rename("spare-1", "i-9")
    proc.communicate(b"\n", timeout=30)
    wait_for(lambda: "i-9" not in pump._names, 20, message="the pipe drained")
    assert pump.path("i-9").read_bytes() == b"spare\ninstance\n"
    assert not pump.path("spare-1").exists()
