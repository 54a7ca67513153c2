"""Finding and driving per-instance cgroups, on fake cgroup trees (v1 and v2 layouts)."""

from pathlib import Path

from appliance.instances import cgroups

V1 = "12:pids:/svc\n4:memory:/svc\n1:name=systemd:/svc\n0::/svc\n"
V2 = "0::/svc\n"


def _v1_tree(root: Path) -> None:
    for ctl in ("memory", "pids"):
        (root / ctl / "svc").mkdir(parents=True)


def test_v1_instance_cgroups_live_under_the_appliances_own_cgroup_with_limits(tmp_path):
    _v1_tree(tmp_path)
    mgr, why = cgroups.detect(tmp_path, V1)
    assert mgr is not None and why == "" and mgr.version == 1
    assert [b.parent for b in mgr.bases] == [tmp_path / "memory" / "svc", tmp_path / "pids" / "svc"]
    cg = mgr.create("i1", 128 << 20, 64)
    mem, pids = cg.dirs
    assert (mem / "memory.limit_in_bytes").read_text() == str(128 << 20)
    assert (pids / "pids.max").read_text() == "64"
    assert cg.procs_files == [str(mem / "cgroup.procs"), str(pids / "cgroup.procs")]


def test_v1_oom_is_read_from_the_oom_kill_counter(tmp_path):
    _v1_tree(tmp_path)
    mgr, _ = cgroups.detect(tmp_path, V1)
    cg = mgr.create("i1", 1 << 27, 64)
    (cg.dirs[0] / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 0\n")
    assert cg.oom_killed() is False
    (cg.dirs[0] / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 1\n")
    assert cg.oom_killed() is True


def test_v2_delegates_memory_and_pids_and_reads_memory_events(tmp_path):
    (tmp_path / "svc").mkdir()
    (tmp_path / "cgroup.controllers").write_text("cpu memory pids\n")
    (tmp_path / "svc" / "cgroup.procs").write_text("")
    mgr, why = cgroups.detect(tmp_path, V2)
    assert mgr is not None and mgr.version == 2, why
    assert (tmp_path / "svc" / "cgroup.subtree_control").read_text() == "+memory +pids"
    cg = mgr.create("i1", 256 << 20, 32)
    d = cg.dirs[0]
    assert (d / "memory.max").read_text() == str(256 << 20)
    (d / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n")
    assert cg.oom_killed() is True


def test_no_memory_controller_means_no_manager_and_a_reason(tmp_path):
    (tmp_path / "cgroup.controllers").write_text("cpu pids\n")
    mgr, why = cgroups.detect(tmp_path, V2)
    assert mgr is None and "no memory controller" in why


def test_v1_limits_are_rewritten_only_when_they_change_and_never_above_memory_plus_swap(tmp_path, monkeypatch):
    _v1_tree(tmp_path)
    mgr, _ = cgroups.detect(tmp_path, V1)
    cg = mgr.create("i1")
    (cg.dirs[0] / "memory.memsw.limit_in_bytes").write_text("max")
    writes = []
    real = cgroups._write
    monkeypatch.setattr(cgroups, "_write", lambda path, value: (writes.append(path.name), real(path, value)))
    cg.set_limits(128 << 20, 64)
    assert writes == ["memory.limit_in_bytes", "memory.memsw.limit_in_bytes", "pids.max"]
    writes.clear()
    cg.set_limits(128 << 20, 64)
    assert writes == []          # a stocked cgroup limited ahead for this size: nothing to write
    cg.set_limits(256 << 20, 64)
    assert writes == ["memory.memsw.limit_in_bytes", "memory.limit_in_bytes", "pids.max"]   # raising
    writes.clear()
    cg.set_limits(64 << 20, 64)
    assert writes == ["memory.limit_in_bytes", "memory.memsw.limit_in_bytes", "pids.max"]   # lowering
    assert (cg.dirs[0] / "memory.limit_in_bytes").read_text() == str(64 << 20)
