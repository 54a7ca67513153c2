"""HTTP/1.1 edge cases of the runtime contract, on raw sockets: what an instance does with input that
``http.client`` never sends (malformed request lines and headers, oversize heads and bodies), with
several requests in one write (pipelining) or one request split over several, and with ``Connection``
rules. Both bootstraps must answer the same statuses and close the connection where they say so."""

import json
import socket
import time

import pytest
from runtime_handlers import code

PY = "python3.11"


def raw_connect(inst, timeout=10.0):
    if inst.socket_path:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout)
        s.connect(inst.socket_path)
    else:
        s = socket.create_connection(("127.0.0.1", inst.port), timeout=timeout)
    return s


class Reader:
    """Reads responses off one socket: status, headers (lower-case names), body."""

    def __init__(self, sock):
        self.sock, self.buf = sock, b""

    def _fill(self):
        data = self.sock.recv(65536)
        if not data:
            raise EOFError
        self.buf += data

    def response(self):
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        if status == 100:
            return self.response()
        if "content-length" in headers:
            n = int(headers["content-length"])
            while len(self.buf) < n:
                self._fill()
            body, self.buf = self.buf[:n], self.buf[n:]
        else:  # no length: the body runs to the end of the connection
            try:
                while True:
                    self._fill()
            except EOFError:
                pass
            body, self.buf = self.buf, b""
        return status, headers, body

    def closed(self):
        """True when the peer closed the connection (after whatever was already read)."""
        if self.buf:
            return False
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True


def exchange(inst, data):
    """Send ``data``, read one response; returns (status, headers, body, closed afterwards?)."""
    with raw_connect(inst) as s:
        s.sendall(data)
        r = Reader(s)
        status, headers, body = r.response()
        return status, headers, body, r.closed()


def invoke_bytes(event, extra=b"", version=b"HTTP/1.1"):
    body = json.dumps(event).encode()
    return (b"POST /_/invoke " + version + b"\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n" + extra + b"\r\n" + body)


@pytest.mark.parametrize("request_bytes", [
    b"NONSENSE\r\n\r\n",
    b"GET /_/health HTTP/1.1 extra\r\nHost: x\r\n\r\n",
    b"GET /_/health HTTP/1.1\r\nHost: x\r\nno colon in this line\r\n\r\n",
    b"GET /_/health HTTP/1.1\r\nHost: x\r\n: empty name\r\n\r\n",
], ids=["one-field", "four-fields", "header-without-colon", "empty-header-name"])
def test_malformed_request_is_400_and_closes(runtime, start_runtime, request_bytes):
    inst = start_runtime(runtime, code(runtime), handler="index.hello")
    status, _, _, closed = exchange(inst, request_bytes)
    assert status == 400 and closed
    assert inst.health()["state"] == "ready"


@pytest.mark.parametrize("request_bytes,expected", [
    (b"GET /_/health\r\nHost: x\r\n\r\n", 400),
    (b"GET /_/health HTTP/2.0\r\nHost: x\r\n\r\n", 505),
    (b"GET /_/health FTP/1.1\r\nHost: x\r\n\r\n", 400),
], ids=["two-fields", "http-2", "not-http"])
def test_python_request_line_version(start_runtime, request_bytes, expected):
    # Node.js's parser serves a request line without a version (as HTTP/0.9) and has its own version rules.
    inst = start_runtime(PY, code(PY), handler="index.hello")
    status, _, _, closed = exchange(inst, request_bytes)
    assert status == expected and closed


@pytest.mark.parametrize("value", [b"abc", b"+5", b"-1", b"1_0"])
def test_bad_content_length_is_400_and_closes(runtime, start_runtime, value):
    inst = start_runtime(runtime, code(runtime), handler="index.hello")
    status, _, _, closed = exchange(inst, b"POST /_/invoke HTTP/1.1\r\nHost: x\r\nContent-Length: " + value +
                                    b"\r\n\r\n{}")
    assert status == 400 and closed


def test_oversize_head_is_431_and_closes(start_runtime):
    # Python only: Node.js answers 431 too but resets the connection with the rest of the head unread,
    # so whether the client reads the answer first is a race.
    inst = start_runtime(PY, code(PY), handler="index.hello")
    status, _, _, closed = exchange(inst, b"GET /_/health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000 +
                                    b"\r\n\r\n")
    assert status == 431 and closed
    assert inst.health()["state"] == "ready"


def test_oversize_body_is_413_before_it_is_sent(start_runtime):
    # Python refuses on the Content-Length alone (Node.js reads the body to count it, so not asserted there).
    inst = start_runtime(PY, code(PY), handler="index.hello")
    status, _, _, closed = exchange(inst, b"POST /_/invoke HTTP/1.1\r\nHost: x\r\nContent-Length: 40000000\r\n\r\n")
    assert status == 413 and closed


def test_pipelined_requests_are_answered_in_order(runtime, start_runtime):
    inst = start_runtime(runtime, code(runtime), handler="index.ctx")
    with raw_connect(inst) as s:
        s.sendall(b"GET /_/health HTTP/1.1\r\nHost: x\r\n\r\n"
                  + invoke_bytes({"n": 1}, b"X-Request-Id: pipe-1\r\n")
                  + b"GET /_/ready HTTP/1.1\r\nHost: x\r\n\r\n"
                  + invoke_bytes({"n": 2}, b"x-request-id:   pipe-2  \r\n"))
        r = Reader(s)
        replies = [r.response() for _ in range(4)]
        assert [status for status, _, _ in replies] == [200, 200, 200, 200]
        assert json.loads(replies[0][2])["state"] == "ready"
        first, second = json.loads(replies[1][2])["result"], json.loads(replies[3][2])["result"]
        assert first["event"] == {"n": 1} and first["requestId"] == "pipe-1"
        assert json.loads(replies[2][2])["state"] == "ready"
        assert second["event"] == {"n": 2} and second["requestId"] == "pipe-2"
        assert not r.buf
        # the connection is still open for more
        s.sendall(invoke_bytes({"n": 3}))
        status, _, body = r.response()
        assert status == 200 and json.loads(body)["result"]["event"] == {"n": 3}


def test_a_request_split_over_many_writes(runtime, start_runtime):
    inst = start_runtime(runtime, code(runtime), handler="index.ctx")
    data = invoke_bytes({"split": True, "pad": "y" * 3000}, b"X-Request-Id: split-1\r\n")
    # the head in 7-byte pieces (a few with a pause, so they arrive as separate reads), the body in 1000-byte ones
    cut = data.index(b"\r\n\r\n") + 4
    pieces = [data[i:min(i + 7, cut)] for i in range(0, cut, 7)] + [data[i:i + 1000] for i in range(cut, len(data), 1000)]
    with raw_connect(inst) as s:
        if not inst.socket_path:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for n, piece in enumerate(pieces):
            s.sendall(piece)
            if n < 10 or n == len(pieces) - 2:
                time.sleep(0.002)
        status, _, body = Reader(s).response()
    assert status == 200, body
    result = json.loads(body)["result"]
    assert status == 200 and result["event"]["split"] is True and result["requestId"] == "split-1"


@pytest.mark.parametrize("version,conn_header,stays_open", [
    (b"HTTP/1.1", b"", True),
    (b"HTTP/1.1", b"Connection: close\r\n", False),
    (b"HTTP/1.1", b"Connection: Close\r\n", False),
    (b"HTTP/1.0", b"", False),
    (b"HTTP/1.0", b"Connection: keep-alive\r\n", True),
], ids=["1.1", "1.1-close", "1.1-Close", "1.0", "1.0-keep-alive"])
def test_connection_header_decides_keep_alive(runtime, start_runtime, version, conn_header, stays_open):
    inst = start_runtime(runtime, code(runtime), handler="index.hello")
    for data in (b"GET /_/health " + version + b"\r\nHost: x\r\n" + conn_header + b"\r\n",
                 invoke_bytes({}, conn_header, version)):
        with raw_connect(inst, timeout=2.0) as s:
            s.sendall(data)
            r = Reader(s)
            status, headers, body = r.response()
            assert status == 200, body
            if stays_open:
                assert headers.get("connection", "keep-alive").lower() != "close"
                s.sendall(invoke_bytes({}, conn_header, version))
                status, _, body = r.response()
                assert status == 200 and json.loads(body)["result"] == "Hello Serverless"
            else:
                assert headers.get("connection", "").lower() == "close"
                assert r.closed()


def test_unix_socket_pipelining_and_close(runtime, start_runtime):
    inst = start_runtime(runtime, code(runtime), handler="index.hello", unix_socket=True)
    with raw_connect(inst) as s:
        s.sendall(invoke_bytes({}) + invoke_bytes({}, b"Connection: close\r\n"))
        r = Reader(s)
        for _ in range(2):
            status, _, body = r.response()
            assert status == 200 and json.loads(body)["result"] == "Hello Serverless"
        assert r.closed()


# --- Python: results the encoder must get right on a reused connection ---------------------------------

ENCODING = r'''
import decimal

BOX = {"inner": None}
LOOP = []
LOOP.append(LOOP)

def handler(event, context):
    if event.get("loop"):
        BOX["inner"] = LOOP
    elif event.get("decimal"):
        return {"int": decimal.Decimal("3"), "frac": decimal.Decimal("2.5")}
    else:
        BOX["inner"] = event.get("n")
    return BOX
'''


def test_python_result_encoding_on_one_connection(start_runtime):
    inst = start_runtime(PY, {"index.py": ENCODING})
    conn = inst.connection()
    try:
        assert inst.invoke({"n": 1}, conn=conn).body["result"] == {"inner": 1}
        err = inst.invoke({"loop": True}, conn=conn).body["error"]
        assert err["errorType"] == "Runtime.ResultNotSerializable" and "Circular" in err["errorMessage"]
        # the same container again, after the failed encoding on this connection's encoder
        assert inst.invoke({"n": 2}, conn=conn).body["result"] == {"inner": 2}
        result = inst.invoke({"decimal": True}, conn=conn).body["result"]
        assert result == {"int": 3, "frac": 2.5} and isinstance(result["int"], int)
    finally:
        conn.close()


def test_a_client_that_half_closes_after_its_invoke_gets_the_reply(start_runtime):
    """The connection's thread sees the end of the connection while the main thread still runs the
    handler (it sleeps 20 ms): the reply is sent before the connection is closed, never cut off."""
    inst = start_runtime(PY, code(PY), handler="index.remaining", unix_socket=True)
    with raw_connect(inst) as s:
        s.sendall(invoke_bytes({}))
        s.shutdown(socket.SHUT_WR)
        r = Reader(s)
        status, _, body = r.response()
        first, then = json.loads(body)["result"]
        assert status == 200 and first >= then
        assert r.closed()
