from appliance.keepalive import SlotView, plan


def views(*specs):
    return [SlotView(id=i, version=v, inflight=n, last_used=t) for i, v, n, t in specs]


def test_idle_instances_past_keep_alive_are_drained():
    got = plan(views(("a", 1, 0, 0.0), ("b", 1, 0, 95.0)), current_version=1, keep_alive_s=90, min_instances=0, now=100)
    assert got == [("a", 90)]


def test_busy_instances_are_never_drained():
    assert plan(views(("a", 1, 1, 0.0)), current_version=1, keep_alive_s=90, min_instances=0, now=1000) == []


def test_min_instances_keep_the_most_recently_used():
    got = plan(views(("old", 1, 0, 0.0), ("new", 1, 0, 5.0)), current_version=1, keep_alive_s=90, min_instances=1,
               now=1000)
    assert got == [("old", 90)]


def test_busy_instances_count_towards_min_instances():
    got = plan(views(("busy", 1, 2, 0.0), ("idle", 1, 0, 0.0)), current_version=1, keep_alive_s=10, min_instances=1,
               now=1000)
    assert got == [("idle", 10)]


def test_old_versions_go_as_soon_as_they_are_idle():
    got = plan(views(("v1", 1, 0, 999.0), ("v2", 2, 0, 999.0)), current_version=2, keep_alive_s=90, min_instances=0,
               now=1000)
    assert got == [("v1", 0.0)]


def test_a_deleted_function_loses_every_idle_instance():
    got = plan(views(("a", 1, 0, 999.0), ("b", 1, 1, 999.0)), current_version=None, keep_alive_s=90,
               min_instances=3, now=1000)
    assert got == [("a", 0.0)]


def test_a_newer_version_being_prewarmed_is_kept_while_the_old_one_serves():
    got = plan(views(("v1", 1, 0, 999.0), ("v2", 2, 0, 0.0)), current_version=1, keep_alive_s=90, min_instances=1,
               now=1000)
    assert got == []   # v2 is not the current version yet, but it is not old either
