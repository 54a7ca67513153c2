"""The hot path's JSON and request ids: orjson where it can, the standard library where it cannot."""

import json
import math
import re
import time

from appliance.core.codec import dumps_compact, loads, new_request_id


def test_dumps_compact_is_compact_json():
    data = {"a": [1, 2.5, "é"], "b": {"c": None, "d": True}}
    out = dumps_compact(data)
    assert isinstance(out, bytes) and b" " not in out
    assert json.loads(out) == data


def test_dumps_compact_falls_back_for_what_orjson_refuses():
    # Integers past 64 bits and non-string keys: orjson raises, the standard encoder copes.
    assert json.loads(dumps_compact({"big": 2 ** 70})) == {"big": 2 ** 70}
    assert json.loads(dumps_compact({1: "x"})) == {"1": "x"}
    # A lone surrogate (json.loads accepts one from an instance) is escaped, not an error.
    assert json.loads(dumps_compact(["\ud800"])) == ["\ud800"]


def test_loads_reads_what_pythons_encoder_writes():
    assert loads(b'{"a": 1}') == {"a": 1}
    assert loads(json.dumps({"big": 2 ** 70}).encode()) == {"big": 2 ** 70}
    assert math.isnan(loads(json.dumps({"x": float("nan")}).encode())["x"])


def test_loads_still_refuses_what_is_not_json():
    for bad in (b"", b"{", b"not json"):
        try:
            loads(bad)
        except ValueError:
            continue
        raise AssertionError(f"{bad!r} was accepted")


def test_request_ids_are_32_hex_digits_ordered_by_time():
    ids = []
    while len({i[:12] for i in ids}) < 3:  # ids from at least three milliseconds
        ids.append(new_request_id())
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)
    stamps = [i[:12] for i in ids]
    assert stamps == sorted(stamps)
    assert abs(int(ids[0][:12], 16) - time.time() * 1000) < 60_000
    assert len({new_request_id() for _ in range(1000)}) == 1000
