"""Waiting in tests: poll a condition until it holds or a deadline passes. Never a blind sleep."""

from __future__ import annotations

import time


def wait_for(predicate, timeout_s: float = 20.0, interval_s: float = 0.01, message: str = "condition"):
    """Return ``predicate()``'s first truthy value; AssertionError once ``timeout_s`` has passed."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {message}")
        time.sleep(interval_s)
