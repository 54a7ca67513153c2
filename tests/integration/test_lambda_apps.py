"""Real Lambda web apps, deployed unchanged, through the edge: a Starlette app and a FastAPI app behind
Mangum, a Flask app behind apig-wsgi, and a Powertools APIGatewayHttpResolver app.

The apps are in ``tests/lambda_apps/<app>/app.py``; their dependencies are the pinned versions in
``tests/lambda_apps/<app>/requirements.txt``, vendored into the package at test time with
``pip install --no-deps --target`` (once per test session, cached under the session's tmp directory),
as one vendors them for Lambda. Each app is bound with ``ANY /<prefix>/{proxy+}`` and checked for its own
routing, path and query parameters, JSON bodies, cookies both ways, binary responses, a chunked binary
upload, redirects and its own 404.
"""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import requests

APPS_DIR = Path(__file__).resolve().parents[1] / "lambda_apps"
APPS = {"starlette_app": "/star", "fastapi_app": "/fast", "flask_app": "/flask", "powertools_app": "/pt"}


def vendor(app: str, cache: Path) -> Path:
    """The app's pinned dependencies installed into a directory (kept for the session)."""
    reqs = APPS_DIR / app / "requirements.txt"
    target = cache / f"{app}-{hashlib.sha256(reqs.read_bytes()).hexdigest()[:12]}"
    if not (target / ".done").exists():
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps",
                        "--no-compile", "--target", str(target), "-r", str(reqs)], check=True, timeout=300)
        (target / ".done").write_text("")
    return target


def package(app: str, deps: Path) -> bytes:
    """The deployment zip: the app's source unchanged at the root, its dependencies beside it."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.write(APPS_DIR / app / "app.py", "app.py")
        for f in sorted(deps.rglob("*")):
            rel = f.relative_to(deps)
            if f.is_file() and rel.parts[0] not in ("bin", ".done") and "__pycache__" not in rel.parts:
                zf.write(f, str(rel))
    return buf.getvalue()


@pytest.fixture(scope="session")
def vendored(tmp_path_factory):
    cache = tmp_path_factory.mktemp("lambda-app-deps")
    return {app: vendor(app, cache) for app in APPS}


@pytest.fixture(scope="module")
def apps(appliance, vendored):
    for app, prefix in APPS.items():
        name = app.replace("_", "-")
        appliance.api.create_function(name=name, handler="app.handler", memory_mb=512, timeout_s=30)
        appliance.api.upload_code(name, package(app, vendored[app]))
        appliance.api.add_trigger(name, "ANY", prefix + "/{proxy+}")
    return appliance


@pytest.fixture(params=list(APPS))
def app(request, apps):
    return apps.edge + APPS[request.param]


def test_routing_path_and_query_parameters(app):
    resp = requests.get(app + "/items/a%20b", params=[("q", "1"), ("q", "two")], timeout=60)
    assert resp.status_code == 200, resp.text
    assert resp.headers["Content-Type"].startswith("application/json")
    assert resp.json() == {"id": "a b", "q": ["1", "two"]}


def test_json_bodies(app):
    resp = requests.post(app + "/echo", json={"name": "héllo", "n": 3}, timeout=60)
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"got": {"name": "héllo", "n": 3}}


def test_cookies_both_ways(app):
    resp = requests.get(app + "/cookies", cookies={"a": "from-client"}, timeout=60)
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"seen": "from-client"}
    set_cookies = [v for k, v in resp.raw.headers.items() if k.lower() == "set-cookie"]
    assert sorted(c.split(";")[0] for c in set_cookies) == ["x=1", "y=2"]


def test_binary_responses(app):
    resp = requests.get(app + "/binary", timeout=60)
    assert resp.status_code == 200, resp.text
    assert resp.headers["Content-Type"] == "image/png"
    assert resp.content == bytes(range(256))


def test_chunked_binary_uploads(app):
    data = bytes(range(256)) * 300 + b"\x00\xff"

    def chunks():
        for i in range(0, len(data), 10_000):
            yield data[i:i + 10_000]

    resp = requests.post(app + "/upload", data=chunks(), headers={"Content-Type": "application/octet-stream"},
                         timeout=60)
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def test_redirects(app):
    resp = requests.get(app + "/redirect", allow_redirects=False, timeout=60)
    assert resp.status_code == 302
    assert resp.headers["Location"].endswith(urlpath(app) + "/items/1")
    followed = requests.get(app + "/redirect", timeout=60)
    assert followed.status_code == 200 and followed.json()["id"] == "1"


def test_the_apps_own_404(app):
    resp = requests.get(app + "/no/such/route", timeout=60)
    assert resp.status_code == 404
    assert "X-Request-Id" in resp.headers
    assert "Trigger.NotFound" not in resp.text  # the app answered, not the edge


def urlpath(url: str) -> str:
    return "/" + url.split("/", 3)[3]


def test_an_asgi_app_with_concurrency_above_1(apps, vendored):
    """Handlers then run on connection threads at once; each thread gets its own event loop."""
    from concurrent.futures import ThreadPoolExecutor
    apps.api.create_function(name="starlette-many", handler="app.handler", memory_mb=512, timeout_s=30, concurrency=4,
                             max_instances=1)
    apps.api.upload_code("starlette-many", package("starlette_app", vendored["starlette_app"]))
    apps.api.add_trigger("starlette-many", "GET", "/star/items/{id}")  # more specific than /star/{proxy+}
    try:
        with ThreadPoolExecutor(8) as pool:
            got = list(pool.map(lambda i: requests.get(f"{apps.edge}/star/items/{i}", timeout=60), range(16)))
        assert [r.status_code for r in got] == [200] * 16, [r.text for r in got if r.status_code != 200]
        assert sorted(int(r.json()["id"]) for r in got) == list(range(16))
        recs = apps.http.get(f"{apps.api_url}/v1/functions/starlette-many/invocations?limit=100", timeout=10).json()
        assert [r["status"] for r in recs["invocations"]] == ["ok"] * 16
    finally:
        apps.api.remove_trigger("GET", "/star/items/{id}")
