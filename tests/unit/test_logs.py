"""Log lines: one per event, key=value, written by the background writer."""

import io
import logging

import pytest

from appliance.core import logs


@pytest.fixture
def stream():
    root = logging.getLogger()
    saved = root.handlers[:], root.level, logs._handler
    out = io.StringIO()
    logs.setup("info", stream=out)
    yield out
    logs._handler.close()
    root.handlers[:], logs._handler = saved[0], saved[2]
    root.setLevel(saved[1])


def _lines(out: io.StringIO) -> list[str]:
    logs._handler._drain()
    return out.getvalue().splitlines()


def test_the_fast_info_line_matches_an_ordinary_one(stream):
    log = logging.getLogger("appliance.test")
    log.info("event=a request_id=%s n=%d", "r1", 3)
    logs.info(log, "event=a request_id=%s n=%d", "r1", 3)
    ordinary, fast = _lines(stream)
    assert ordinary.split(" ", 1)[1] == fast.split(" ", 1)[1] == \
        "level=info logger=appliance.test event=a request_id=r1 n=3"
    assert fast.startswith("ts=") and fast.split(" ", 1)[0].endswith("Z")


def test_the_fast_line_keeps_the_values_of_the_call(stream):
    log = logging.getLogger("appliance.test")
    value = ["before"]
    logs.info(log, "event=b value=%s", value)
    value[0] = "after"
    assert _lines(stream)[-1].endswith("event=b value=['before']")


def test_the_fast_line_reaches_any_other_handler_as_a_record(stream):
    """With another handler attached (log capture does this), lines go through logging."""
    log = logging.getLogger("appliance.test")
    seen = []

    class Capture(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())

    cap = Capture()
    log.addHandler(cap)
    try:
        logs.info(log, "event=c n=%d", 1)
    finally:
        log.removeHandler(cap)
    assert seen == ["event=c n=1"]
    assert _lines(stream)[-1].endswith("event=c n=1")


def test_the_fast_line_respects_the_level(stream):
    log = logging.getLogger("appliance.test")
    log.setLevel(logging.WARNING)
    try:
        logs.info(log, "event=d")
    finally:
        log.setLevel(logging.NOTSET)
    assert not any("event=d" in line for line in _lines(stream))
