"""Lambda SnapStart's runtime hooks (``snapshot_restore_py``) as the Python runtime runs them, and the
checks of a process about to become a snapshot template."""

from __future__ import annotations

import importlib.util
import socket
import sys
from pathlib import Path

import pytest

RUNTIME = Path(__file__).resolve().parents[2] / "runtimes" / "python"


def _load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture
def hooks(monkeypatch):
    mod = _load("snapshot_restore_py", RUNTIME / "snapshot_restore_py.py")
    monkeypatch.setitem(sys.modules, "snapshot_restore_py", mod)
    return mod


@pytest.fixture(scope="module")
def bootstrap():
    return _load("_test_bootstrap", RUNTIME / "bootstrap.py")


def test_before_hooks_run_last_registered_first_and_after_hooks_in_order(hooks, bootstrap):
    ran = []
    hooks.register_before_snapshot(ran.append, "before-a")

    @hooks.register_before_snapshot
    def before_b():
        ran.append("before-b")

    hooks.register_after_restore(lambda x, y=0: ran.append(f"after-a {x} {y}"), 1, y=2)

    @hooks.register_after_restore
    def after_b():
        ran.append("after-b")

    assert before_b.__name__ == "before_b" and after_b.__name__ == "after_b"   # decorators return the function
    bootstrap.run_before_snapshot()
    bootstrap.run_after_restore()
    assert ran == ["before-b", "before-a", "after-a 1 2", "after-b"]
    assert [f for f, _, _ in hooks.get_before_snapshot()] == [ran.append, before_b]


def test_no_module_imported_means_no_hooks(bootstrap, monkeypatch):
    monkeypatch.delitem(sys.modules, "snapshot_restore_py", raising=False)
    bootstrap.run_before_snapshot()
    bootstrap.run_after_restore()


def test_a_sender_datagram_socket_is_renewable_but_a_bound_one_is_not(bootstrap):
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    bound = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    bound.bind(("127.0.0.1", 0))
    stream = socket.socket()
    try:
        family, kind, _, peer = bootstrap._udp_socket(sender.fileno())
        assert (family, kind, peer) == (socket.AF_INET, socket.SOCK_DGRAM, None)
        assert bootstrap._udp_socket(bound.fileno()) is None
        assert bootstrap._udp_socket(stream.fileno()) is None
        before = sender.fileno()
        bootstrap._renew_udp(before, family, kind, 0, None)
        assert sender.fileno() == before
        sender.connect(("127.0.0.1", 9))
        assert sender.getsockname()[1] != 0
    finally:
        for s in (sender, bound, stream):
            s.close()


def test_an_idle_event_loop_is_recognised_and_renewed_with_descriptors_of_its_own(bootstrap):
    import asyncio
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        found, fds = bootstrap._idle_loop_fds()
        assert found is loop and fds == {loop._selector.fileno(), loop._ssock.fileno(), loop._csock.fileno()}
        bootstrap._renew_loop(loop)
        assert loop._selector.fileno() not in fds or loop._ssock.fileno() not in fds
        assert loop.run_until_complete(asyncio.sleep(0, result="still works")) == "still works"
        # a loop with a reader of its own is not idle: its descriptors are the function's business
        r, w = socket.socketpair()
        loop.add_reader(r.fileno(), lambda: None)
        assert bootstrap._idle_loop_fds() == (None, set())
        loop.remove_reader(r.fileno())
        r.close()
        w.close()
    finally:
        asyncio.set_event_loop(None)
        loop.close()
