"""Cluster cold starts through the doubles, at real speed: how long ``NomadScheduler.start`` takes
from the request to a passing ``fn-<function>`` entry, for a pool claim and for a dispatch.

    PYTHONPATH=. python tests/cluster/measure_cold_start.py [--n 20] [--no-stagger]

The Consul double staggers the first probe of every check by a random pause of up to its interval
(as the agent does) and the Nomad double runs restart delays unscaled; the jobs use their shipped
check interval (2 s). Real processes: the launcher, the Python bootstrap, moto's S3. What real
Nomad and Consul add on top (scheduling, client polling, agent sync) is discussed in
docs/cluster.md, "Cold-start latency in cluster mode"."""
from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from doubles.consul import ConsulDouble  # noqa: E402
from doubles.nomad import NomadDouble  # noqa: E402
from helpers import HELLO, MotoServer, job_vars, package, wait_until  # noqa: E402

from appliance.backends.consul_registry import ConsulRegistry  # noqa: E402
from appliance.backends.nomad_scheduler import NomadScheduler  # noqa: E402
from appliance.backends.s3_blob import S3BlobStore  # noqa: E402
from appliance.core.model import InstanceSpec  # noqa: E402
from appliance.instances.client import InstanceClient  # noqa: E402


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, int(round(p / 100 * len(xs) + 0.5)) - 1))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--no-stagger", action="store_true")
    args = ap.parse_args()
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    tmp = tempfile.mkdtemp(prefix="faas-measure-")
    consul = ConsulDouble(probe_stagger=not args.no_stagger, reap_interval=1.0, min_deregister_after=1.0).start()
    nomad = NomadDouble(consul=consul, data_dir=os.path.join(tmp, "nomad"), delay_scale=1.0).start()
    s3 = MotoServer()
    blobs = S3BlobStore(bucket="measure", endpoint_url=s3.url, access_key="testing", secret_key="testing")
    blobs.ensure_bucket()
    data = package(HELLO)
    digest = hashlib.sha256(data).hexdigest()
    blobs.put(digest, data)
    # The shipped check interval (2 s), not the tests' 1 s.
    variables = job_vars(consul.url, os.path.join(tmp, "code"), python_count=1).replace(
        'check_interval = "1s"', 'check_interval = "2s"')
    registry = ConsulRegistry(consul.url)
    client = InstanceClient()
    sched = NomadScheduler(nomad_addr=nomad.url, consul_addr=consul.url, registry=registry, blobs=blobs,
                           client=client, jobspecs_dir="jobspecs", job_vars=variables, pool_refill_s=0,
                           maintain=False)
    sched.ensure_jobs()
    pool, dispatch = [], []
    try:
        for i in range(args.n):
            wait_until(lambda: consul.passing_instances("faas-pool-python3-11"), 60, "a free pool instance")
            spec = InstanceSpec(function=f"p{i}", version=1, digest=digest, runtime="python3.11",
                                handler="index.handler", memory_mb=128, timeout_s=3, concurrency=1, environment={})
            t0 = time.monotonic()
            inst = sched.start(spec, time.monotonic() + 60)
            pool.append((time.monotonic() - t0) * 1000)
            sched.stop(inst, graceful=False)
            sched.refill_pool()
        for i in range(args.n):
            spec = InstanceSpec(function=f"d{i}", version=1, digest=digest, runtime="python3.11",
                                handler="index.handler", memory_mb=512, timeout_s=3, concurrency=1,
                                environment={})  # more than a pool instance's 256 MB: dispatched
            t0 = time.monotonic()
            inst = sched.start(spec, time.monotonic() + 60)
            dispatch.append((time.monotonic() - t0) * 1000)
            sched.stop(inst, graceful=False)
        assert sched.stats["pool_starts"] == args.n and sched.stats["dispatch_starts"] == args.n, sched.stats
    finally:
        sched.close()
        registry.close()
        client.close_all()
        nomad.close()
        consul.close()
        s3.close()
    print(f"stagger={'off' if args.no_stagger else 'on'} n={args.n} check_interval=2s")
    for name, xs in (("pool claim", pool), ("dispatch", dispatch)):
        print(f"{name:10s}  p50 {statistics.median(xs):7.1f} ms  p99 {pct(xs, 99):7.1f} ms  "
              f"min {min(xs):7.1f}  max {max(xs):7.1f}")


if __name__ == "__main__":
    main()
