"""Fixtures that run a real appliance (a `faas up` process) and drive it over HTTP."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import uuid
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from appliance.client import ApplianceClient
from tests.integration.console_browser import browser, shots  # noqa: F401 - the console tests' fixtures
from tests.waiting import wait_for  # noqa: F401 - re-exported for the tests here

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Running:
    proc: subprocess.Popen
    data_dir: Path
    edge: str
    api_url: str
    api: ApplianceClient
    log_path: Path
    #: The admin token the appliance wrote at its first start.
    token: str = ""

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    @property
    def http(self) -> requests.Session:
        """A requests session that sends the admin token (``r.http.get(url)`` as ``requests.get(url)``)."""
        return self.api.session

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def deploy(self, files: dict[str, str] | None = None, *, name: str | None = None, trigger: tuple | None = None,
               **config) -> str:
        """Create a function from a {path: source} map; returns its name."""
        name = name or f"fn-{uuid.uuid4().hex[:8]}"
        self.api.create_function(name=name, **config)
        self.api.upload_code(name, make_zip(files or {"index.py": HELLO}))
        if trigger:
            self.api.add_trigger(name, *trigger)
        return name

    def instances(self, name: str) -> list[dict]:
        return self.http.get(f"{self.api_url}/v1/functions/{name}/instances", timeout=5).json()["instances"]

    def get(self, path: str, **kw) -> requests.Response:
        return requests.get(self.edge + path, timeout=kw.pop("timeout", 30), **kw)


HELLO = "def handler(event, context):\n    return 'Hello Serverless'\n"


def make_zip(files: dict[str, str | bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for path, src in files.items():
            zf.writestr(path, src)
    return buf.getvalue()


def start_appliance(tmp: Path, env: dict[str, str] | None = None, example: str | None = None) -> Running:
    data = tmp / "data"
    log_path = tmp / "appliance.log"
    cmd = [sys.executable, "-m", "appliance", "up", "--data-dir", str(data), "--edge-port", "0", "--api-port", "0"]
    if example:
        cmd += ["--example", example]
    full_env = {**os.environ, "APPLIANCE_REAP_INTERVAL_S": "0.2", **(env or {})}
    out = open(log_path, "wb")
    proc = subprocess.Popen(cmd, cwd=str(REPO), env=full_env, stdout=out, stderr=subprocess.STDOUT)
    info_path = data / "appliance.json"

    def ready():
        if proc.poll() is not None:
            raise AssertionError(f"appliance exited with {proc.returncode}:\n{log_path.read_text()}")
        return info_path.exists() and json.loads(info_path.read_text())

    info = wait_for(ready, 30, message="the appliance to listen")
    token = ((data / "admin.token").read_text().strip() if (data / "admin.token").exists()
             else full_env.get("APPLIANCE_ADMIN_TOKEN", ""))  # cluster mode: seeded, as Ansible does
    api = ApplianceClient(info["api_url"], token=token or None)
    return Running(proc=proc, data_dir=data, edge=info["edge_url"], api_url=info["api_url"], api=api,
                   log_path=log_path, token=token)


def stop_appliance(r: Running) -> None:
    r.proc.send_signal(signal.SIGTERM)
    try:
        r.proc.wait(20)
    except subprocess.TimeoutExpired:
        r.proc.kill()
        r.proc.wait(5)


@pytest.fixture(scope="module")
def appliance(tmp_path_factory):
    r = start_appliance(tmp_path_factory.mktemp("appliance"))
    yield r
    stop_appliance(r)


@pytest.fixture
def make_appliance(tmp_path_factory):
    """Start an appliance with particular settings; stopped after the test."""
    started = []

    def make(env=None, example=None):
        r = start_appliance(tmp_path_factory.mktemp("appliance"), env, example)
        started.append(r)
        return r

    yield make
    for r in started:
        stop_appliance(r)
