"""Every malformed body the control API can get is answered 400 (or another 4xx) with a stable
code, never 500: wrong types in every field, deep nesting, invalid UTF-8, lone surrogates,
trailing newlines in names. Seeded, so a failure reproduces."""

import json
import random

import pytest

from appliance.config import Settings
from appliance.control.api import create_control_app
from appliance.wiring import build, ensure_admin_token

WEIRD = [5, -1, 0, 1.5, 1e308, 10 ** 30, True, False, None, "", "x", "abc\n", "a" * 5000, [], [1, "a"], {},
         {"a": 1}, "\ud800", "index.handler\n", "GET\n", "/p\n", "../x", "\x00"]

BODIES = {
    ("POST", "/v1/functions"): {"name": "fz", "runtime": "python3.11", "handler": "index.handler", "memory_mb": 128,
                                "timeout_s": 3, "concurrency": 1, "max_instances": 2, "min_instances": 0,
                                "keep_alive_s": 9, "environment": {"A": "b"}, "description": "d",
                                "network": "default"},
    ("PATCH", "/v1/functions/f"): {"memory_mb": 256, "environment": {"K": "v"}, "handler": "index.handler"},
    ("POST", "/v1/triggers"): {"function": "f", "method": "GET", "path": "/fz"},
    ("POST", "/v1/functions/f/triggers"): {"method": "GET", "path": "/fz2"},
    ("PUT", "/v1/functions/f/code"): {"files": {"index.py": "def handler(e, c):\n    return 1\n"}},
    ("POST", "/v1/functions/f/invocations"): {"key": "value"},
}


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    c = build(Settings(data_dir=str(tmp_path_factory.mktemp("data")), sandbox="off").validate())
    app = create_control_app(c)
    client = app.test_client()
    token = ensure_admin_token(c).read_text().strip()  # as the first start does
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {token}"
    assert client.post("/v1/functions", json={"name": "f"}).status_code == 201
    yield client
    c.close()


def check(resp, what):
    assert resp.status_code != 500 and resp.status_code < 600, (what, resp.status_code, resp.data[:300])
    if resp.status_code >= 400:
        err = resp.get_json()["error"]
        assert err["code"] and err["message"], what


def send(client, method, path, raw: bytes):
    return client.open(path, method=method, data=raw, content_type="application/json")


def encode(body) -> bytes:
    return json.dumps(body).encode()   # lone surrogates become \ud800 escapes, as a client would send


@pytest.mark.parametrize("method, path", list(BODIES))
def test_every_field_with_every_wrong_type(client, method, path):
    base = BODIES[(method, path)]
    for field in base:
        for value in WEIRD:
            body = {**base, field: value}
            check(send(client, method, path, encode(body)), (method, path, field, value))
        for value in WEIRD:   # and one level down, where there is one
            if isinstance(base[field], dict):
                inner = {**base[field], next(iter(base[field])): value}
                check(send(client, method, path, encode({**base, field: inner})), (method, path, field, value))


@pytest.mark.parametrize("method, path", list(BODIES))
@pytest.mark.parametrize("raw", [
    b"[" * 100_000 + b"]" * 100_000,
    b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
    b"\xff\xfe{}",
    b'{"name": "\xc3\x28"}',
    b'{"name": "\\ud800"}',
    b"[]", b"5", b"null", b'"s"', b"{", b"",
], ids=["deep-list", "deep-object", "bad-bom", "invalid-utf8", "surrogate", "list", "number", "null", "string",
        "truncated", "empty"])
def test_malformed_bodies(client, method, path, raw):
    check(send(client, method, path, raw), (method, path, raw[:20]))


def test_random_mutations(client):
    rnd = random.Random(1313)
    for _ in range(400):
        (method, path), base = rnd.choice(list(BODIES.items()))
        body = dict(base)
        for _ in range(rnd.randint(1, 3)):
            body[rnd.choice(list(base) + ["extra"])] = rnd.choice(WEIRD)
        raw = encode(body)
        if rnd.random() < 0.2:   # flip a byte
            i = rnd.randrange(len(raw))
            raw = raw[:i] + bytes([rnd.randrange(256)]) + raw[i + 1:]
        check(send(client, method, path, raw), (method, path, raw[:80]))


@pytest.mark.parametrize("name", ["abc\n", "abc\n\n", "a\nb"])
def test_names_with_a_newline_are_refused_and_not_created(client, name):
    resp = client.post("/v1/functions", json={"name": name})
    assert resp.status_code == 400 and resp.get_json()["error"]["field"] == "name"
    assert name not in [f["name"] for f in client.get("/v1/functions").get_json()["functions"]]


def test_the_environment_limit_counts_bytes():
    from appliance.core.errors import ValidationError
    from appliance.core.model import ENV_MAX_BYTES, FunctionConfig
    FunctionConfig.from_request({"name": "f", "environment": {"K": "a" * (ENV_MAX_BYTES - 1)}})
    with pytest.raises(ValidationError, match="bytes"):
        FunctionConfig.from_request({"name": "f", "environment": {"K": "\u00e9" * (ENV_MAX_BYTES // 2)}})
