"""``faas doctor`` in cluster mode, as a real process against the doubles and moto."""
from __future__ import annotations

import os
import subprocess
import sys

import requests
from helpers import ROOT, job_vars, moto_s3  # noqa: F401

from appliance.backends.consul_registry import ConsulRegistry
from appliance.backends.nomad_scheduler import NomadScheduler


def doctor(env) -> str:
    p = subprocess.run([sys.executable, "-m", "appliance", "--api", "http://127.0.0.1:9", "doctor"], cwd=ROOT,
                       env={**os.environ, **env}, capture_output=True, text=True, timeout=60)
    return p.stdout + p.stderr


def test_doctor_checks_nomad_consul_s3_and_jobs(consul_double, nomad_double, moto_s3, tmp_path):
    requests.put(f"{moto_s3.url}/doctor-code", timeout=5)  # create the bucket
    env = {"APPLIANCE_MODE": "cluster", "APPLIANCE_NOMAD_ADDR": nomad_double.url,
           "APPLIANCE_CONSUL_ADDR": consul_double.url, "APPLIANCE_S3_ENDPOINT": moto_s3.url,
           "APPLIANCE_S3_BUCKET": "doctor-code", "APPLIANCE_S3_ACCESS_KEY": "testing",
           "APPLIANCE_S3_SECRET_KEY": "testing"}
    out = doctor(env)
    assert f"[ok] Nomad: {nomad_double.url}" in out
    assert f"[ok] Consul: {consul_double.url}" in out
    assert "[ok] S3 code store: bucket doctor-code" in out
    assert "[FAIL] Nomad job function-instance: not registered" in out
    reg = ConsulRegistry(consul_double.url)
    try:
        NomadScheduler(nomad_addr=nomad_double.url, consul_addr=consul_double.url, registry=reg, blobs=None,
                       client=None, jobspecs_dir=os.path.join(ROOT, "jobspecs"), maintain=False,
                       job_vars=job_vars(consul_double.url, str(tmp_path), python_count=0)).ensure_jobs()
    finally:
        reg.close()
    out = doctor(env)
    assert "[ok] Nomad job function-instance" in out and "[ok] Nomad job runtime-pool" in out
    nomad_double.down()
    consul_double.down()
    try:
        out = doctor({**env, "APPLIANCE_S3_BUCKET": "no-such-bucket"})
    finally:
        consul_double.up()
        nomad_double.up()
    assert "[FAIL] Nomad:" in out and "does not answer" in out
    assert "[FAIL] Consul:" in out
    assert "[FAIL] S3 code store:" in out
