"""The async runner's share bound: a function's events take at most its share of its capacity, so
the rest of its instances stay for synchronous traffic; other functions' events still run."""

from __future__ import annotations

import threading
from dataclasses import dataclass

from appliance.backends.sqlite_queue import SqliteEventQueue
from appliance.core.async_runner import AsyncRunner
from appliance.core.model import FunctionConfig, FunctionRecord
from tests.waiting import wait_for


class Store:
    def __init__(self, *configs):
        self.records = {c.name: FunctionRecord(config=c, version=1, digest="d") for c in configs}

    def get(self, name, fresh=False):
        return self.records[name]

    def find(self, name, fresh=False):
        return self.records.get(name)


@dataclass
class Rec:
    status: str = "ok"
    http_status: int = 200


@dataclass
class Outcome:
    record: Rec
    result: object = None
    error: object = None


class GatedInvoker:
    """Holds every invocation until the test opens the gate; records how many ran at once."""

    def __init__(self):
        self.gate = threading.Event()
        self.lock = threading.Lock()
        self.running: dict[str, int] = {}
        self.peak: dict[str, int] = {}
        self.calls: list[tuple[str, str, int]] = []

    def invoke(self, function, body, *, request_id, trigger, attempt):
        with self.lock:
            self.running[function] = self.running.get(function, 0) + 1
            self.peak[function] = max(self.peak.get(function, 0), self.running[function])
            self.calls.append((function, request_id, attempt))
        self.gate.wait(30)
        with self.lock:
            self.running[function] -= 1
        return Outcome(Rec(), result="ok")


def test_a_functions_events_take_only_its_share(tmp_path):
    store = Store(FunctionConfig.from_request({"name": "f", "max_instances": 2}),
                  FunctionConfig.from_request({"name": "g", "max_instances": 4}))
    queue = SqliteEventQueue(tmp_path / "events.sqlite3")
    invoker = GatedInvoker()
    runner = AsyncRunner(queue, store, invoker, workers=8, share=0.5)
    runner.start()
    try:
        for i in range(4):
            runner.accept("f", b"{}", event_id=f"f{i}")
            runner.accept("g", b"{}", event_id=f"g{i}")
        # f: 2 instances x 1 concurrency x 0.5 = 1 at a time; g: 4 x 0.5 = 2 at a time.
        wait_for(lambda: invoker.running.get("f") == 1 and invoker.running.get("g") == 2, 10,
                 message="each function at its share")
        assert queue.counts("f") == {"running": 1, "queued": 3} and queue.counts("g") == {"running": 2, "queued": 2}
        invoker.gate.set()
        wait_for(lambda: queue.counts() == {"succeeded": 8}, 10, message="every event to finish")
        assert invoker.peak == {"f": 1, "g": 2}
        assert all(attempt == 1 and rid in {f"f{i}" for i in range(4)} | {f"g{i}" for i in range(4)}
                   for _, rid, attempt in invoker.calls)
    finally:
        invoker.gate.set()
        runner.stop()
        queue.close()
