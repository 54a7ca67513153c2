import threading
import time

import pytest

from appliance.backends.local_registry import LocalRegistry
from appliance.core.activator import Activator, ColdCause
from appliance.core.errors import ColdStartTimeout, FunctionError, PlacementFailed, QueueFull
from tests.waiting import wait_for

from .fakes import FakeScheduler, spec


@pytest.fixture
def parts():
    registry = LocalRegistry()
    scheduler = FakeScheduler(registry)
    return scheduler, Activator(scheduler, registry, max_queue=100, start_timeout_s=5)


def far():
    return time.monotonic() + 10


def test_a_cold_function_starts_one_instance_and_the_request_is_labelled_cold(parts):
    scheduler, a = parts
    lease = a.acquire(spec(), max_instances=5, deadline=far())
    assert lease.cold and lease.cause == ColdCause.NO_INSTANCE
    assert len(scheduler.started) == 1
    a.release(lease)
    again = a.acquire(spec(), max_instances=5, deadline=far())
    assert not again.cold and again.instance.id == lease.instance.id


def test_a_burst_on_a_cold_function_starts_at_most_max_instances_and_serves_everyone(parts):
    scheduler, a = parts
    scheduler.gate.clear()
    results, errors = [], []

    def one():
        try:
            lease = a.acquire(spec(), max_instances=5, deadline=far())
            results.append(lease.instance.id)
            a.release(lease)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(50)]
    for t in threads:
        t.start()
    for _ in range(5):
        assert scheduler.starts_entered.acquire(timeout=5)
    scheduler.gate.set()
    for t in threads:
        t.join(10)
    assert errors == []
    assert len(results) == 50
    # Four instances may serve all fifty before the fifth start thread gets past the gate: let it finish.
    wait_for(lambda: len(scheduler.started) >= 5, 10, 0.001, "the fifth start to finish")
    assert len(scheduler.started) == 5
    assert set(results) <= {i.id for i in scheduler.started}


def test_concurrency_above_one_needs_fewer_instances(parts):
    scheduler, a = parts
    scheduler.gate.clear()
    leases = []
    threads = [threading.Thread(target=lambda: leases.append(a.acquire(spec(concurrency=4), max_instances=10,
                                                                         deadline=far()))) for _ in range(8)]
    for t in threads:
        t.start()
    assert scheduler.starts_entered.acquire(timeout=5)
    assert scheduler.starts_entered.acquire(timeout=5)
    scheduler.gate.set()
    for t in threads:
        t.join(10)
    assert len(leases) == 8 and len(scheduler.started) == 2


def test_waiters_are_served_in_arrival_order(parts):
    scheduler, a = parts
    first = a.acquire(spec(), max_instances=1, deadline=far())
    order = []
    threads = []
    for i in range(5):
        def wait(i=i):
            lease = a.acquire(spec(), max_instances=1, deadline=far())
            order.append(i)
            a.release(lease)
        t = threading.Thread(target=wait)
        t.start()
        threads.append(t)
        # each waiter is queued before the next arrives
        wait_for(lambda i=i: len(a.pool("f").waiters) >= i + 1, 5, 0.001, "the waiter to queue")
    a.release(first)
    for t in threads:
        t.join(5)
    assert order == [0, 1, 2, 3, 4]


def test_a_full_queue_refuses_at_once(parts):
    scheduler, a = parts
    a.max_queue = 2
    a.pool("f").max_queue = 2
    held = a.acquire(spec(), max_instances=1, deadline=far())
    waiting = [threading.Thread(target=lambda: a.release(a.acquire(spec(), max_instances=1, deadline=far())))
               for _ in range(2)]
    for t in waiting:
        t.start()
    wait_for(lambda: len(a.pool("f").waiters) >= 2, 5, 0.001)
    with pytest.raises(QueueFull):
        a.acquire(spec(), max_instances=1, deadline=far())
    a.release(held)
    for t in waiting:
        t.join(5)


def test_a_waiter_gives_up_at_its_deadline_and_leaves_the_queue(parts):
    scheduler, a = parts
    held = a.acquire(spec(), max_instances=1, deadline=far())
    with pytest.raises(ColdStartTimeout):
        a.acquire(spec(), max_instances=1, deadline=time.monotonic() + 0.05)
    assert len(a.pool("f").waiters) == 0
    a.release(held)


def test_a_failed_start_fails_the_requests_waiting_for_it(parts):
    scheduler, a = parts
    scheduler.fail_with = PlacementFailed("no room")
    with pytest.raises(PlacementFailed):
        a.acquire(spec(), max_instances=1, deadline=far())
    assert a.pool("f").starting == 0


def test_code_that_fails_to_load_is_not_retried_for_every_request(parts):
    scheduler, a = parts
    scheduler.fail_with = FunctionError({"errorType": "Runtime.ImportModuleError", "errorMessage": "No module"})
    for _ in range(3):
        with pytest.raises(FunctionError):
            a.acquire(spec(), max_instances=1, deadline=far())
    assert scheduler.starts_entered._value == 1  # one start, then the cached error


def test_a_new_version_does_not_use_old_instances(parts):
    scheduler, a = parts
    old = a.acquire(spec(version=1), max_instances=2, deadline=far())
    a.release(old)
    new = a.acquire(spec(version=2), max_instances=2, deadline=far())
    assert new.cold and new.cause == ColdCause.NEW_VERSION
    assert new.instance.version == 2


def test_a_gone_instance_is_replaced_for_the_next_request(parts):
    scheduler, a = parts
    lease = a.acquire(spec(), max_instances=1, deadline=far())
    a.release(lease, outcome="crashed")
    again = a.acquire(spec(), max_instances=1, deadline=far())
    assert again.cold and again.cause == ColdCause.AFTER_CRASH
    assert again.instance.id != lease.instance.id


def test_min_instances_are_started_without_requests(parts):
    scheduler, a = parts
    assert a.ensure_min(spec(), min_instances=2, max_instances=3) == 2
    # A slot may appear through the registry a moment before its start marks it reserved.
    wait_for(lambda: len(a.pool("f").slots) >= 2 and all(s.reserved for s in a.pool("f").slots.values()), 5, 0.001)
    assert a.ensure_min(spec(), min_instances=2, max_instances=3) == 0


def test_with_a_policy_a_cold_burst_starts_what_the_policy_asks_not_n_and_not_one(parts):
    from appliance.core.autoscaler import ScalingPolicy

    scheduler, a = parts
    scheduler.gate.clear()
    policy = ScalingPolicy(target_concurrency=1, max_instances=100, max_scale_up_rate=10)
    leases = []
    threads = [threading.Thread(target=lambda: leases.append(
        a.acquire(spec(), max_instances=100, deadline=far(), policy=policy))) for _ in range(50)]
    for t in threads:
        t.start()
    wait_for(lambda: len(a.pool("f").waiters) >= 50, 5, 0.001)
    started_while_cold = a.pool("f").starting
    reason = a.pool("f").last_decision.reason
    scheduler.gate.set()
    for t in threads:
        t.join(10)
    assert len(leases) == 50
    # ceil(50 queued / 1 per instance) = 50, limited to 10x one instance per decision
    assert started_while_cold == 10
    assert "50 queued" in reason and "-> 10" in reason


# -- the event loop's side: acquire_async --------------------------------------------------

async def until(condition, timeout_s=5.0):
    """Yield to the loop until ``condition()`` holds (the tasks under test run in between)."""
    import asyncio

    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0)

def test_async_requests_queue_on_the_loop_and_get_slots_released_by_threads(parts):
    """Waiting is a future: one loop thread holds many queued requests, and a slot released on
    another thread reaches them in arrival order."""
    import asyncio

    scheduler, a = parts
    first = a.acquire(spec(), max_instances=1, deadline=far())   # the only instance, now busy
    order = []

    async def main():
        async def one(i):
            lease = await a.acquire_async(spec(), max_instances=1, deadline=far())
            order.append(i)
            await asyncio.sleep(0)
            a.release(lease)

        tasks = [asyncio.create_task(one(i)) for i in range(5)]
        await until(lambda: len(a.pool("f").waiters) == 5)
        assert order == []                                   # all five are queued
        threading.Thread(target=a.release, args=(first,)).start()
        await asyncio.wait_for(asyncio.gather(*tasks), 5)

    asyncio.run(main())
    assert order == [0, 1, 2, 3, 4]
    assert len(scheduler.started) == 1


def test_an_async_waiter_times_out_and_leaves_the_queue(parts):
    import asyncio

    _, a = parts
    busy = a.acquire(spec(), max_instances=1, deadline=far())
    with pytest.raises(ColdStartTimeout):
        asyncio.run(a.acquire_async(spec(), max_instances=1, deadline=time.monotonic() + 0.05))
    assert a.pool("f").waiters == type(a.pool("f").waiters)()
    a.release(busy)


def test_a_cancelled_async_waiter_leaves_the_queue_and_keeps_no_slot(parts):
    """A request cancelled while queued (its client went away) must neither stay in the queue
    nor hold a slot: the next request gets the instance, warm."""
    import asyncio

    _, a = parts
    busy = a.acquire(spec(), max_instances=1, deadline=far())

    async def main():
        task = asyncio.create_task(a.acquire_async(spec(), max_instances=1, deadline=far()))
        await until(lambda: len(a.pool("f").waiters) == 1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert len(a.pool("f").waiters) == 0

    asyncio.run(main())
    a.release(busy)
    again = a.acquire(spec(), max_instances=1, deadline=time.monotonic() + 1)
    assert not again.cold
    a.release(again)


def test_published_versions_get_pools_of_their_own_beside_latest(parts):
    """Instances of $LATEST and of published version 1 (same code version, other settings) never serve
    each other's requests, and a registry update keeps each in its own pool."""
    import dataclasses

    scheduler, a = parts
    latest = spec(version=3)
    published = dataclasses.replace(spec(version=3), published=1, memory_mb=256)
    l1 = a.acquire(latest, max_instances=5, deadline=far())
    p1 = a.acquire(published, max_instances=5, deadline=far())
    assert l1.cold and p1.cold and l1.instance.id != p1.instance.id
    assert (l1.instance.pool, p1.instance.pool) == ("f", "f:1")
    a.release(l1)
    a.release(p1)
    scheduler.registry._notify("f")  # what another edge's start, or a gone instance, sets off
    assert {p.name: list(p.slots) for p in a.pools_of("f")} == {"f": [l1.instance.id], "f:1": [p1.instance.id]}
    # Warm requests find their own version's instance; neither pool starts another.
    again_l = a.acquire(latest, max_instances=5, deadline=far())
    again_p = a.acquire(published, max_instances=5, deadline=far())
    assert (again_l.instance.id, again_p.instance.id) == (l1.instance.id, p1.instance.id)
    assert not again_l.cold and not again_p.cold and len(scheduler.started) == 2
    a.release(again_l)
    a.release(again_p)
    # An instance that goes away leaves only its own pool.
    a.forget(p1.instance.id, "f")
    assert {p.name: list(p.slots) for p in a.pools_of("f")} == {"f": [l1.instance.id], "f:1": []}
