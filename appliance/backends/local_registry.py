"""In-process registry of ready instances (embedded mode's warm-instance cache source)."""

from __future__ import annotations

import threading
from typing import Callable

from appliance.core.model import Instance


class LocalRegistry:
    """Ready instances by function. The local scheduler adds an instance once it answers
    ``/_/ready`` and removes it when its process ends; the data plane may ``forget`` one early."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_function: dict[str, dict[str, Instance]] = {}
        self._index: dict[str, str] = {}
        self._subscribers: list[Callable[[str], None]] = []

    def add(self, instance: Instance) -> None:
        with self._lock:
            self._by_function.setdefault(instance.function, {})[instance.id] = instance
            self._index[instance.id] = instance.function
        self._notify(instance.function)

    def ready(self, function: str) -> list[Instance]:
        with self._lock:
            return list(self._by_function.get(function, {}).values())

    def forget(self, instance_id: str) -> None:
        with self._lock:
            function = self._index.pop(instance_id, None)
            if function is None:
                return
            self._by_function.get(function, {}).pop(instance_id, None)
        self._notify(function)

    def subscribe(self, callback: Callable[[str], None]) -> None:
        with self._lock:
            self._subscribers.append(callback)

    def _notify(self, function: str) -> None:
        for cb in list(self._subscribers):
            cb(function)
