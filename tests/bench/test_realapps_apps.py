"""The benchmark's four real applications import and answer API Gateway events with their vendored
dependencies, and their packages pass the appliance's code limits.

The dependencies are vendored once per session from the pinned ``bench/realapps/<app>/requirements.txt``
(``pip install --target`` from PyPI, the same build the benchmark deploys). A failed vendoring fails
the tests rather than skipping them. Each handler runs in an isolated interpreter (``-I -S``: no
site-packages, no PYTHONPATH), so a dependency missing from the pins cannot be borrowed from the
test environment.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from appliance.core import codepkg
from appliance.edge.events import build_event
from appliance.edge.request import RawRequest
from bench.realapps import APPS, ORDER, ORDER_BODY, build, check_answer

pytestmark = pytest.mark.slow

CALL = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
import app

class Context:
    function_name = "smoke"
    function_version = "$LATEST"
    memory_limit_in_mb = 256
    aws_request_id = "smoke-request"
    invoked_function_arn = "arn:aws:lambda:us-east-1:000000000000:function:smoke"
    log_group_name = "/aws/lambda/smoke"
    log_stream_name = "smoke"
    def get_remaining_time_in_millis(self):
        return 30000

answers = [app.handler(event, Context()) for event in json.loads(sys.stdin.read())]
print("\n" + json.dumps({"answers": answers, "modules": sorted(sys.modules)}))
"""


@pytest.fixture(scope="session")
def bundles(tmp_path_factory):
    cache = tmp_path_factory.mktemp("realapps-cache")
    try:
        return build.build_all(cache, lambda msg: None)
    except (build.BuildError, subprocess.TimeoutExpired) as exc:
        pytest.fail(f"vendoring the real applications' pinned dependencies from PyPI failed: {exc}")


def event(method: str, path: str, body: bytes = b"") -> dict:
    headers = (("host", "bench.local"), ("content-type", "application/json"))
    req = RawRequest(method=method, path=path, query="q=a&q=b" if method == "GET" else "", headers=headers,
                     body=body, source_ip="127.0.0.1", host="bench.local")
    return build_event(req, route_key=f"{method} {path}", path_params={}, request_id="smoke")


def call(bundle: Path, env: dict, events: list[dict]) -> dict:
    p = subprocess.run([sys.executable, "-I", "-S", "-c", CALL, str(bundle)], input=json.dumps(events),
                       capture_output=True, text=True, timeout=60, env={"LAMBDA_TASK_ROOT": str(bundle), **env})
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", list(APPS))
def test_handler_answers_api_gateway_events_with_vendored_deps(bundles, name):
    app = APPS[name]
    bundle = bundles[name]["dir"]
    bad = json.dumps({"item": "book", "quantity": "many"}).encode()
    out = call(bundle, app.env, [event("POST", app.path(), ORDER_BODY), event("POST", app.path(), bad)])
    ok, refused = out["answers"]
    assert ok["statusCode"] == 200, ok
    check_answer(app, ok["statusCode"], ok["body"].encode())
    assert json.loads(ok["body"])["item"] == ORDER["item"]
    assert refused["statusCode"] in (400, 422), refused
    # Every module came from the bundle or the standard library, never from the test environment.
    assert not any(m.startswith(("pytest", "appliance", "bench")) for m in out["modules"])


@pytest.mark.parametrize("name", [n for n in APPS if n != "pydantic_app"])
def test_web_apps_route_a_second_path(bundles, name):
    app = APPS[name]
    out = call(bundles[name]["dir"], app.env, [event("GET", f"{app.prefix}/items/42")])
    (answer,) = out["answers"]
    assert answer["statusCode"] == 200, answer
    assert json.loads(answer["body"]) == {"id": "42", "q": ["a", "b"]}


@pytest.mark.parametrize("name", list(APPS))
def test_package_passes_the_appliance_code_limits(bundles, name):
    info = codepkg.inspect_zip(bundles[name]["zip"].read_bytes(), codepkg.Limits())
    assert "app.py" in info.names
    assert info.files == bundles[name]["files"]


def test_vendoring_is_cached_by_requirements_hash(bundles, tmp_path_factory):
    app = APPS["flask_app"]
    d = bundles["flask_app"]["dir"]
    deps = d.parent / f"deps-flask_app-{build.cache_key(app.requirements.read_text())}"
    assert (deps / ".done").exists()
    mtime = (deps / ".done").stat().st_mtime_ns
    again, _ = build.bundle(app, d.parent.parent, lambda msg: None)      # no pip run: same key
    assert again == d and (deps / ".done").stat().st_mtime_ns == mtime
