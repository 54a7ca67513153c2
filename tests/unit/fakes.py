"""Fakes of the core's ports, for testing the core without processes."""

import threading

from appliance.backends.local_registry import LocalRegistry
from appliance.core.model import Instance, InstanceSpec


class FakeScheduler:
    """Starts 'instances' on demand; a test can hold starts at a gate or make them fail."""

    def __init__(self, registry: LocalRegistry):
        self.registry = registry
        self.started: list[Instance] = []
        self.stopped: list[str] = []
        self.gate = threading.Event()
        self.gate.set()
        self.fail_with: BaseException | None = None
        self._lock = threading.Lock()
        self.starts_entered = threading.Semaphore(0)

    def start(self, spec: InstanceSpec, deadline: float) -> Instance:
        self.starts_entered.release()
        self.gate.wait(10)
        if self.fail_with is not None:
            raise self.fail_with
        with self._lock:
            inst = Instance(id=f"{spec.function}-{len(self.started)}", function=spec.function, version=spec.version,
                            address=f"127.0.0.1:{10000 + len(self.started)}", concurrency=spec.concurrency,
                            phases={"code_fetch": 1.0, "runtime_init": 2.0, "user_init": 3.0},
                            published=spec.published)
            self.started.append(inst)
        self.registry.add(inst)
        return inst

    def stop(self, instance, *, graceful=True):
        self.stopped.append(instance.id)
        self.registry.forget(instance.id)

    def instances(self, function=None):
        return [i for i in self.started if i.id not in self.stopped and function in (None, i.function)]

    def exit_cause(self, instance_id):
        return None


def spec(name="f", version=1, concurrency=1):
    return InstanceSpec(function=name, version=version, digest="0" * 64, runtime="python3.11", handler="index.handler",
                        memory_mb=128, timeout_s=3, concurrency=concurrency, environment={})
