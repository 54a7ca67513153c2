"""The instance reply parser both edge clients share: whole replies, however the bytes arrive."""

import pytest

from appliance.instances.client import ProtocolError, ReplyParser, encode_request

PLAIN = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Faas-Exiting: 1\r\n\r\nhello"
CHUNKED = b"HTTP/1.1 503 Busy\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n"


def feed_bytewise(data: bytes):
    p = ReplyParser()
    out = []
    for i in range(len(data)):
        p.feed(data[i:i + 1])
        got = p.reply()
        if got is not None:
            out.append(got)
    return out


def test_a_reply_fed_byte_by_byte_comes_out_once_and_whole():
    assert feed_bytewise(PLAIN) == [(200, {"content-length": "5", "x-faas-exiting": "1"}, b"hello", False)]
    assert feed_bytewise(CHUNKED) == [(503, {"transfer-encoding": "chunked"}, b"abcde", False)]


def test_back_to_back_replies_are_kept_apart():
    p = ReplyParser()
    p.feed(PLAIN + CHUNKED + PLAIN[:10])
    assert p.reply()[2] == b"hello"
    assert p.reply()[2] == b"abcde"
    assert p.reply() is None
    p.feed(PLAIN[10:])
    assert p.reply()[2] == b"hello"


def test_close_is_reported():
    p = ReplyParser()
    p.feed(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n")
    assert p.reply()[3] is True
    p.feed(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
    assert p.reply()[3] is True


@pytest.mark.parametrize("data", [
    b"SMTP 220 hi\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
])
def test_malformed_replies_are_protocol_errors(data):
    p = ReplyParser()
    p.feed(data)
    with pytest.raises(ProtocolError):
        p.reply()


def test_headers_past_the_bound_are_refused():
    p = ReplyParser()
    p.feed(b"HTTP/1.1 200 OK\r\n" + b"X: " + b"a" * (70 * 1024))
    with pytest.raises(ProtocolError):
        p.reply()


def test_requests_carry_their_length():
    assert encode_request("POST", "/_/invoke", b"{}", {"X-Request-Id": "r"}) == (
        b"POST /_/invoke HTTP/1.1\r\nHost: instance\r\nX-Request-Id: r\r\nContent-Length: 2\r\n\r\n{}")
    assert b"Content-Length" not in encode_request("GET", "/_/ready", None, {})


def test_the_invoke_request_shortcut_is_the_general_encoding():
    from appliance.instances.client import encode_invoke, invoke_headers

    for body in (b"", b'{"a":1}', "é".encode() * 300):
        assert encode_invoke(body, "r-1", 1795400000123) == encode_request(
            "POST", "/_/invoke", body, invoke_headers("r-1", 1795400000123))
