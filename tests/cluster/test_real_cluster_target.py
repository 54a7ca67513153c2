"""``make test-cluster-real`` without real agents: a clear message and a failing exit status, and no
test counted as passed (the conformance module itself only runs with FAAS_REAL_CLUSTER=1)."""
from __future__ import annotations

import os
import subprocess

from helpers import ROOT


def test_without_agents_it_says_so_and_fails():
    env = {k: v for k, v in os.environ.items()
           if k not in ("NOMAD_ADDR", "CONSUL_ADDR", "CONSUL_HTTP_ADDR", "APPLIANCE_S3_ENDPOINT", "APPLIANCE_S3_BUCKET")}
    p = subprocess.run(["make", "-s", "test-cluster-real"], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=60)
    assert p.returncode != 0
    assert "no real agents given" in p.stderr and "NOMAD_ADDR" in p.stderr and "Nothing was run" in p.stderr
    assert "passed" not in p.stdout + p.stderr


def test_with_only_some_addresses_it_still_fails(tmp_path):
    env = {**os.environ, "NOMAD_ADDR": "http://127.0.0.1:9"}
    for k in ("CONSUL_ADDR", "CONSUL_HTTP_ADDR"):
        env.pop(k, None)
    p = subprocess.run(["make", "-s", "test-cluster-real"], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=60)
    assert p.returncode != 0 and "no real agents given" in p.stderr
