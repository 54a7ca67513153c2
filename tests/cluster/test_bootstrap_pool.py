"""The bootstraps' cluster additions (runtimes/README.md section 6), on real processes started the
way Nomad starts them (``python -m appliance instance`` with ``FAAS_POOL=1``): the /_/pool check,
code fetched by URL and verified, unsafe packages refused, one fetch per digest per node (across
runtimes), and self-registration in Consul as fn-<function>. Each runs for Python and Node.js."""
from __future__ import annotations

import hashlib
import http.server
import io
import os
import signal
import subprocess
import sys
import threading
import zipfile

import pytest
import requests
from helpers import HELLO, ROOT, free_port, package, wait_until

RUNTIMES = ["python3.11", "nodejs20"]
NODE_HELLO = "exports.handler = async () => 'Hello Serverless';\n"


def hello(runtime: str) -> bytes:
    return package(HELLO) if runtime == "python3.11" else package(NODE_HELLO, "index.js")


class Files:
    """Serves byte strings over HTTP and counts the GETs per path."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.gets: dict[str, int] = {}
        outer = self

        class H(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                outer.gets[self.path] = outer.gets.get(self.path, 0) + 1
                data = outer.files.get(self.path)
                self.send_response(200 if data is not None else 404)
                self.send_header("Content-Length", str(len(data or b"")))
                self.end_headers()
                self.wfile.write(data or b"")

            def log_message(self, *a):
                pass

        self.srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()

    def add(self, name: str, data: bytes) -> str:
        self.files[f"/{name}"] = data
        return f"http://127.0.0.1:{self.srv.server_address[1]}/{name}"

    def close(self):
        self.srv.shutdown()
        self.srv.server_close()


@pytest.fixture
def files():
    f = Files()
    yield f
    f.close()


@pytest.fixture(params=RUNTIMES)
def runtime(request) -> str:
    return request.param


@pytest.fixture
def pool_instance(consul_double, tmp_path, runtime):
    procs = []

    def start(instance_id="alloc-1", runtime=runtime, consul=None, **more_env):
        port = free_port()
        outer = {k: v for k, v in os.environ.items() if k != "CONSUL_HTTP_TOKEN"}  # only a test's own token
        env = {**outer, "FAAS_POOL": "1", "FAAS_RUNTIME": runtime, "FAAS_PORT": str(port),
               "FAAS_INSTANCE_ID": instance_id, "FAAS_CODE_CACHE_DIR": str(tmp_path / "cache"),
               "CONSUL_HTTP_ADDR": (consul or consul_double).url, "FAAS_CHECK_INTERVAL": "1s",
               "PYTHONPATH": os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])), **more_env}
        p = subprocess.Popen([sys.executable, "-m", "appliance", "instance"], cwd=ROOT, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        procs.append(p)
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: requests.get(url + "/_/health", timeout=1).ok, 15, "the pool instance to listen")
        return p, url
    yield start
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()


def replaced_by_a_generic_one(p, url):
    """The instance left (exit 0); the launcher, still the task's process, started a fresh generic one
    on the same port. Nomad saw no exit, so its restart budget is untouched. SIGTERM ends it."""
    wait_until(lambda: requests.get(url + "/_/pool", timeout=1).status_code == 200, 15, "a fresh generic instance")
    assert p.poll() is None
    p.send_signal(signal.SIGTERM)
    assert p.wait(15) == 0


def specialize(url, **body):
    base = {"function": "hello", "version": "2", "handler": "index.handler", "maxInflight": 3}
    return requests.post(url + "/_/specialize", json={**base, **body}, timeout=30)


def test_pool_check_fetch_and_self_registration(pool_instance, files, consul_double, tmp_path, runtime):
    p, url = pool_instance()
    assert requests.get(url + "/_/pool", timeout=5).status_code == 200
    assert requests.get(url + "/_/ready", timeout=5).status_code == 503
    data = hello(runtime)
    digest = hashlib.sha256(data).hexdigest()
    r = specialize(url, instanceId="alloc-1.abcd", codeUrl=files.add("pkg.zip", data), codeSha256=digest)
    assert r.status_code == 200 and r.json()["state"] == "ready", r.text
    assert r.json()["registered"] == "fn-hello-alloc-1.abcd"
    assert requests.get(url + "/_/pool", timeout=5).status_code == 503  # left the pool
    (unpacked,) = [f for f in os.listdir(tmp_path / "cache" / digest) if f.startswith("index.")]
    assert (tmp_path / "cache" / digest / unpacked).read_bytes() == zipfile.ZipFile(io.BytesIO(data)).read(unpacked)
    entry = wait_until(lambda: consul_double.passing_instances("fn-hello"), 15, "registered and passing")[0]
    assert entry["Meta"] == {"function": "hello", "version": "2", "instance_id": "alloc-1.abcd",
                             "runtime": runtime, "concurrency": "3", "source": "pool"}
    assert set(entry["Tags"]) >= {"version=2", "instance=alloc-1.abcd", "source=pool"}
    assert entry["Port"] == int(url.rsplit(":", 1)[1])
    assert requests.post(url + "/_/invoke", data=b"{}", timeout=5).json()["result"] == "Hello Serverless"
    assert requests.post(url + "/_/drain", json={}, timeout=5).json() == {"drained": True}
    replaced_by_a_generic_one(p, url)
    assert "fn-hello-alloc-1.abcd" not in consul_double.services  # deregistered on exit


def test_a_specialised_instance_passes_as_soon_as_specialize_answers(pool_instance, files, consul_double, runtime):
    """The instance registers once its code has loaded, with the check passing from the start:
    Consul's first probe comes only after a random stagger of up to the interval (60 s here)."""
    assert consul_double.probe_stagger
    p, url = pool_instance(FAAS_CHECK_INTERVAL="60s")
    data = hello(runtime)
    r = specialize(url, instanceId="alloc-1.abcd", codeUrl=files.add("pkg.zip", data),
                   codeSha256=hashlib.sha256(data).hexdigest())
    assert r.status_code == 200 and r.json()["registered"], r.text
    assert [e["ID"] for e in consul_double.passing_instances("fn-hello")] == ["fn-hello-alloc-1.abcd"]


CLAIM = "/v1/kv/faas/pool/claims/alloc-1"


def test_every_consul_call_of_a_pool_instance_carries_its_token(pool_instance, files, make_consul_double, runtime):
    """Consul with ACLs on and default deny: the launcher clears the allocation's old claim, and the
    specialised instance registers and deregisters itself, each with CONSUL_HTTP_TOKEN. The function's
    own environment (here naming another Consul and token) does not redirect the instance's calls."""
    consul = make_consul_double(acl_tokens={"instance-token"})
    auth = {"X-Consul-Token": "instance-token"}
    assert requests.put(consul.url + CLAIM, data=b"{}", headers=auth, timeout=5).text == "true"
    p, url = pool_instance(consul=consul, CONSUL_HTTP_TOKEN="instance-token")
    assert requests.get(consul.url + CLAIM, headers=auth, timeout=5).status_code == 404  # cleared at start
    data = hello(runtime)
    r = specialize(url, instanceId="alloc-1.abcd", codeUrl=files.add("pkg.zip", data),
                   codeSha256=hashlib.sha256(data).hexdigest(),
                   env={"CONSUL_HTTP_ADDR": "http://127.0.0.1:9", "CONSUL_HTTP_TOKEN": "function-token"})
    assert r.status_code == 200 and r.json()["registered"] == "fn-hello-alloc-1.abcd", r.text
    wait_until(lambda: consul.passing_instances("fn-hello"), 15, "registered and passing")
    assert requests.post(url + "/_/drain", json={}, timeout=5).json() == {"drained": True}
    replaced_by_a_generic_one(p, url)
    assert "fn-hello-alloc-1.abcd" not in consul.services  # deregistered on exit
    calls = [(m, path, t) for m, path, t in consul.request_tokens
             if path.startswith("/v1/agent/service/") or (path == CLAIM and m == "DELETE")]
    # The claim is cleared again before the fresh generic instance starts.
    assert calls == [("DELETE", CLAIM, "instance-token"),
                     ("PUT", "/v1/agent/service/register", "instance-token"),
                     ("PUT", "/v1/agent/service/deregister/fn-hello-alloc-1.abcd", "instance-token"),
                     ("DELETE", CLAIM, "instance-token")]


def test_without_a_token_consul_refuses_the_pool_instance(pool_instance, files, make_consul_double, runtime):
    """The same Consul without CONSUL_HTTP_TOKEN: registration is refused, so the instance answers
    502 and leaves (the platform starts the function elsewhere) rather than serve unlisted."""
    consul = make_consul_double(acl_tokens={"instance-token"})
    p, url = pool_instance(consul=consul)
    data = hello(runtime)
    r = specialize(url, instanceId="alloc-1.abcd", codeUrl=files.add("pkg.zip", data),
                   codeSha256=hashlib.sha256(data).hexdigest())
    assert r.status_code == 502 and "Consul registration failed" in r.json()["error"], r.text
    assert "403" in r.json()["error"]
    replaced_by_a_generic_one(p, url)
    assert ("PUT", "/v1/agent/service/register", "") in consul.request_tokens and not consul.services


def test_a_digest_is_fetched_once_per_node(pool_instance, files, runtime):
    data = hello(runtime)
    digest = hashlib.sha256(data).hexdigest()
    link = files.add("once.zip", data)
    for i in range(2):
        _, url = pool_instance(f"alloc-{i}")
        assert specialize(url, instanceId=f"a{i}", codeUrl=link, codeSha256=digest).json()["state"] == "ready"
    assert files.gets["/once.zip"] == 1


@pytest.mark.parametrize("runtime", ["python3.11"])  # the test itself starts both runtimes
def test_one_fetch_per_digest_is_shared_by_every_runtime_on_a_node(pool_instance, files):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("index.py", HELLO)
        zf.writestr("index.js", NODE_HELLO)
    data = buf.getvalue()
    digest = hashlib.sha256(data).hexdigest()
    link = files.add("both.zip", data)
    for i, runtime in enumerate(RUNTIMES):
        _, url = pool_instance(f"alloc-{i}", runtime=runtime)
        r = specialize(url, instanceId=f"a{i}", codeUrl=link, codeSha256=digest)
        assert r.json()["state"] == "ready", r.text
        assert requests.post(url + "/_/invoke", data=b"{}", timeout=5).json()["result"] == "Hello Serverless"
    assert files.gets["/both.zip"] == 1


@pytest.mark.parametrize("entry", ["../evil.py", "/abs.py", "a/../../evil.py"])
def test_unsafe_packages_are_refused(pool_instance, files, tmp_path, entry, runtime):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("index.py", HELLO)
        zf.writestr(entry, "x = 1\n")
    data = buf.getvalue()
    p, url = pool_instance()
    r = specialize(url, codeUrl=files.add("bad.zip", data), codeSha256=hashlib.sha256(data).hexdigest())
    assert r.status_code == 502 and "code fetch failed" in r.json()["error"], r.text
    assert repr(entry) in r.json()["error"]
    replaced_by_a_generic_one(p, url)  # it leaves; the platform starts the function elsewhere
    assert not (tmp_path / "evil.py").exists() and not (tmp_path / "cache" / hashlib.sha256(data).hexdigest()).exists()


def test_a_package_that_does_not_match_its_digest_is_refused(pool_instance, files, tmp_path, runtime):
    p, url = pool_instance()
    r = specialize(url, codeUrl=files.add("x.zip", hello(runtime)), codeSha256="0" * 64)
    assert r.status_code == 502, r.text
    assert ("does not match codeSha256" if runtime == "python3.11" else "expected " + "0" * 64) in r.json()["error"]
    replaced_by_a_generic_one(p, url)
    assert not (tmp_path / "cache" / ("0" * 64)).exists()


def test_a_malformed_digest_is_refused_before_any_fetch(pool_instance, files, runtime):
    p, url = pool_instance()
    r = specialize(url, codeUrl=files.add("y.zip", hello(runtime)), codeSha256="../../etc")
    assert r.status_code == 502 and "64 lowercase hex digits" in r.json()["error"], r.text
    replaced_by_a_generic_one(p, url)
    assert not files.gets
