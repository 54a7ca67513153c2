"""The ``provided`` runtime in cluster mode: the function-instance job dispatches it, the runtime pool
keeps generic ones that fetch the function's code (its ``bootstrap`` included) when specialised; against
the Nomad and Consul doubles, moto's S3 and real processes."""
from __future__ import annotations

import hashlib
import io
import time
import zipfile

from helpers import job_vars, moto_s3, wait_until  # noqa: F401

from appliance.backends.consul_registry import ConsulRegistry
from appliance.backends.nomad_scheduler import NomadScheduler, pool_service
from appliance.backends.s3_blob import S3BlobStore
from appliance.core.model import InstanceSpec
from appliance.instances.client import InstanceClient

# The classic shell custom runtime: one invocation, answered with a greeting from the environment.
BOOTSTRAP = """#!/bin/sh
set -eu
API="http://$AWS_LAMBDA_RUNTIME_API/2018-06-01/runtime"
while true; do
  H=$(mktemp)
  curl -sS -D "$H" -o /dev/null "$API/invocation/next"
  ID=$(grep -Fi Lambda-Runtime-Aws-Request-Id "$H" | tr -d '[:space:]' | cut -d: -f2)
  curl -sS -o /dev/null "$API/invocation/$ID/response" -d "\\"$GREETING from $_HANDLER\\""
done
"""


def package() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        info = zipfile.ZipInfo("bootstrap")
        info.external_attr = 0o100755 << 16
        zf.writestr(info, BOOTSTRAP)
    return buf.getvalue()


def test_provided_functions_dispatch_and_start_from_their_pool(consul_double, nomad_double, moto_s3, tmp_path):
    blobs = S3BlobStore(bucket="code-provided", endpoint_url=moto_s3.url, access_key="testing", secret_key="testing")
    blobs.ensure_bucket()
    client = InstanceClient()
    reg = ConsulRegistry(consul_double.url, removal_grace_s=0.2)
    s = NomadScheduler(consul_addr=consul_double.url, nomad_addr=nomad_double.url, registry=reg, blobs=blobs,
                       client=client, jobspecs_dir="jobspecs",
                       job_vars=job_vars(consul_double.url, str(tmp_path / "code"), python_count=0, provided_count=1),
                       pool_refill_s=0, retry_s=2.0, maintain=False)
    try:
        s.ensure_jobs()
        assert pool_service("provided.al2023") == pool_service("provided") == "faas-pool-provided"
        wait_until(lambda: consul_double.passing_instances("faas-pool-provided"), 30, "a free provided pool instance")
        data = package()
        digest = hashlib.sha256(data).hexdigest()
        blobs.put(digest, data)
        spec = InstanceSpec(function="sh", version=1, digest=digest, runtime="provided.al2023", handler="fn.handler",
                            memory_mb=128, timeout_s=3, concurrency=1, environment={"GREETING": "hi"})

        def invoke(inst):
            return client.invoke(inst, b"{}", request_id="r1", deadline_ms=int((time.time() + 5) * 1000),
                                 read_timeout_s=5).body

        pooled = s.start(spec, time.monotonic() + 30)
        assert "." in pooled.id and s.stats["pool_starts"] == 1          # specialised from the pool
        assert invoke(pooled)["result"] == "hi from fn.handler"
        (entry,) = consul_double.passing_instances("fn-sh")
        assert entry["Meta"]["runtime"] == "provided" and "source=pool" in entry["Tags"]
        dispatched = s.start(spec, time.monotonic() + 30)                 # the pool is used up: dispatched
        assert "." not in dispatched.id
        assert invoke(dispatched)["result"] == "hi from fn.handler"
    finally:
        s.close()
        reg.close()
        client.close_all()
