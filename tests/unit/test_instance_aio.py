"""The edge's event-loop client against a real socket server speaking the runtime's replies."""

import asyncio
import json
import os
import tempfile

import pytest

from appliance.core.model import Instance
from appliance.instances.aio_client import AsyncInstanceClient
from appliance.instances.client import InstanceLost, InstanceTimeout, InstanceUnreachable


def reply(body: dict, status=200, extra=b"") -> bytes:
    data = json.dumps(body).encode()
    return b"HTTP/1.1 %d X\r\nContent-Length: %d\r\n%s\r\n" % (status, len(data), extra) + data


async def serve(handler):
    """A Unix-socket server; ``handler(request_bytes, writer)`` answers each request."""
    path = os.path.join(tempfile.mkdtemp(), "i.sock")
    conns = []

    async def on_conn(reader, writer):
        conns.append(writer)
        while True:
            head = await reader.readuntil(b"\r\n\r\n") if not reader.at_eof() else b""
            if not head:
                return
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            body = await reader.readexactly(length)
            if await handler(body, writer) is False:
                return

    server = await asyncio.start_unix_server(on_conn, path)
    return server, Instance(id="i-1", function="f", version=1, address=f"unix:{path}", concurrency=1), conns


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 10))


def test_replies_come_back_and_the_connection_is_kept():
    async def main():
        async def ok(body, w):
            w.write(reply({"ok": True, "result": json.loads(body)}))

        server, inst, conns = await serve(ok)
        c = AsyncInstanceClient()
        for i in range(3):
            r = await c.invoke(inst, json.dumps({"n": i}).encode(), request_id="r", deadline_ms=0, read_timeout_s=2)
            assert (r.status, r.body["result"], r.refused) == (200, {"n": i}, None)
        server.close()
        return len(conns)

    assert run(main()) == 1


def test_a_refusal_and_an_exiting_instance_are_reported():
    async def main():
        async def busy(body, w):
            w.write(reply({"ok": False}, 503, b"X-Faas-Refused: capacity\r\nX-Faas-Exiting: 1\r\n"))

        server, inst, _ = await serve(busy)
        r = await AsyncInstanceClient().invoke(inst, b"{}", request_id="r", deadline_ms=0, read_timeout_s=2)
        server.close()
        return r

    r = run(main())
    assert (r.refused, r.exiting) == ("capacity", True)


def test_no_reply_before_the_deadline_is_a_timeout():
    async def main():
        async def silent(body, w):
            return None

        server, inst, _ = await serve(silent)
        with pytest.raises(InstanceTimeout):
            await AsyncInstanceClient().invoke(inst, b"{}", request_id="r", deadline_ms=0, read_timeout_s=0.2)
        server.close()

    run(main())


def test_a_connection_closed_mid_request_is_lost_not_unreachable():
    async def main():
        async def die(body, w):
            w.close()
            return False

        server, inst, _ = await serve(die)
        with pytest.raises(InstanceLost):
            await AsyncInstanceClient().invoke(inst, b"{}", request_id="r", deadline_ms=0, read_timeout_s=2)
        server.close()

    run(main())


def test_nothing_listening_is_unreachable():
    inst = Instance(id="i-1", function="f", version=1, address="unix:/nonexistent/i.sock", concurrency=1)
    with pytest.raises(InstanceUnreachable):
        run(AsyncInstanceClient().invoke(inst, b"{}", request_id="r", deadline_ms=0, read_timeout_s=1))
