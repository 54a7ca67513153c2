"""Replies from instances are bounded: a reply over the limit is refused (502
Function.ResponseTooLarge) as soon as its size is known, parsing is linear in the reply's size, and
what is billed is the platform's own measure of the round trip, not what the instance reports."""

import asyncio
import json
import os
import socket
import threading
import time

import pytest

from appliance.backends.local_registry import LocalRegistry
from appliance.core.activator import Activator
from appliance.core.invoker import Invoker
from appliance.core.model import FunctionConfig, FunctionRecord, Instance
from appliance.core.records import RecordStore
from appliance.core.scaler import PolicyCache
from appliance.instances.aio_client import AsyncInstanceClient
from appliance.instances.client import (
    BodyTooLarge,
    InstanceClient,
    InvokeReply,
    ReplyParser,
    ReplyTooLarge,
)

from .fakes import FakeScheduler

FN = FunctionRecord(config=FunctionConfig(name="f", max_instances=2, memory_mb=1024), version=1, digest="0" * 64)


def test_a_content_length_over_the_limit_is_refused_before_the_body_comes():
    p = ReplyParser(max_body=1000)
    p.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 1001\r\n\r\n")
    with pytest.raises(BodyTooLarge):
        p.reply()


def test_chunks_over_the_limit_are_refused_once_their_sum_passes_it():
    p = ReplyParser(max_body=1000)
    p.feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"1f4\r\n" + b"a" * 500 + b"\r\n")
    assert p.reply() is None
    p.feed(b"1f5\r\n")
    with pytest.raises(BodyTooLarge):
        p.reply()


def test_a_large_reply_fed_in_small_pieces_comes_out_whole():
    body = os.urandom(1 << 20) * 24   # 24 MiB in 64 KiB reads: 384 feeds, each appended, none copied whole
    data = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    p = ReplyParser(max_body=32 << 20)
    out = None
    for i in range(0, len(data), 65536):
        p.feed(data[i:i + 65536])
        got = p.reply()
        if got is not None:
            out = got
    assert out is not None and out[2] == body


def serve_once(payload: bytes):
    """A TCP server that answers one request with ``payload`` (then keeps writing what is left)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)

    def run():
        conn, _ = srv.accept()
        conn.recv(65536)
        try:
            conn.sendall(payload)
        except OSError:
            pass   # the client stopped reading past the limit and closed
        conn.close()
        srv.close()

    threading.Thread(target=run, daemon=True).start()
    return Instance(id="i-1", function="f", version=1, address=f"127.0.0.1:{srv.getsockname()[1]}", concurrency=1)


def big_reply(n: int) -> bytes:
    data = json.dumps({"ok": True, "result": "x" * n, "logs": []}).encode()
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(data) + data


def test_the_blocking_client_refuses_a_reply_over_the_limit():
    client = InstanceClient(max_reply_bytes=1 << 20)
    inst = serve_once(big_reply(3 << 20))
    with pytest.raises(ReplyTooLarge):
        client.invoke(inst, b"{}", request_id="r", deadline_ms=0, read_timeout_s=5)
    ok = serve_once(big_reply(100))
    assert client.invoke(ok, b"{}", request_id="r", deadline_ms=0, read_timeout_s=5).body["result"] == "x" * 100


def test_the_event_loop_client_refuses_a_reply_over_the_limit():
    client = AsyncInstanceClient(max_reply_bytes=1 << 20)
    inst = serve_once(big_reply(3 << 20))

    async def go():
        with pytest.raises(ReplyTooLarge):
            await client.invoke(inst, b"{}", request_id="r", deadline_ms=0, read_timeout_s=5)

    asyncio.run(go())


class Store:
    def get(self, name):
        return FN

    def peek(self, name):
        return FN


class Clock:
    """The monotonic clock, moved on by what the fake instance 'ran'."""

    def __init__(self):
        self.offset = 0.0

    @property
    def t(self):
        return time.monotonic() + self.offset

    @t.setter
    def t(self, value):
        self.offset += value - self.t

    def __call__(self):
        return self.t


class Client:
    """Answers for started instances; each call takes ``run_s`` on the test's clock."""

    def __init__(self, clock, reply, run_s=20.0):
        self.clock, self.reply, self.run_s = clock, reply, run_s

    def invoke(self, instance, body, **kw):
        self.clock.t += self.run_s
        if isinstance(self.reply, Exception):
            raise self.reply
        return self.reply


@pytest.fixture
def parts(tmp_path):
    registry = LocalRegistry()
    scheduler = FakeScheduler(registry)
    records = RecordStore(tmp_path / "inv.db")
    yield registry, scheduler, records
    records.close()


def make_invoker(parts, client, clock):
    registry, scheduler, records = parts
    return Invoker(Store(), Activator(scheduler, registry, start_timeout_s=5), client, scheduler, registry, records,
                   PolicyCache(), clock=clock)


def test_billing_uses_the_platforms_clock_not_the_reported_duration(parts):
    clock = Clock()
    # The handler claims it ran 10 us; the round trip took 20 s on the platform's clock.
    client = Client(clock, InvokeReply(status=200, body={"ok": True, "result": 1, "durationMs": 0.01}))
    out = make_invoker(parts, client, clock).invoke("f", b"{}", request_id="r1")
    assert out.ok
    assert out.record.run_ms == pytest.approx(20000.0, abs=50)
    assert out.record.billed_gb_s == pytest.approx(20.0, abs=0.05)   # 1 GB for 20 s, not 0.00001


def test_a_reply_over_the_limit_is_a_502_response_too_large(parts):
    clock = Clock()
    client = Client(clock, ReplyTooLarge("the reply is 7340032 bytes; the limit is 7340032"), run_s=1.0)
    out = make_invoker(parts, client, clock).invoke("f", b"{}", request_id="r2")
    assert out.error.code == "Function.ResponseTooLarge" and out.error.status == 502
    assert out.record.status == "error" and out.record.billed_gb_s == pytest.approx(1.0, abs=0.05)


@pytest.mark.parametrize("body", [[1, 2], {"ok": False, "error": "boom"}, {"ok": False, "error": {"errorType": 5}},
                                  {"ok": False, "error": {"errorType": "X", "errorMessage": {"a": 1}}},
                                  {"ok": True, "result": 1, "logs": "not a list"}])
def test_malformed_reply_envelopes_are_502_not_500(parts, body):
    clock = Clock()
    out = make_invoker(parts, Client(clock, InvokeReply(status=200, body=body), run_s=0.1), clock).invoke(
        "f", b"{}", request_id="r3")
    assert out.ok or out.error.status == 502
