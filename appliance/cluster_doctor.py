"""``faas doctor`` in cluster mode: do Nomad, Consul and S3 answer, and are our jobs registered?

Each check builds the same client the appliance would, from the same settings, so a pass here
means the appliance's own calls reach their targets.
"""

from __future__ import annotations

from .config import Settings


def cluster_checks(settings: Settings) -> list[tuple[str, bool, str]]:
    """(label, ok, detail) per check; never raises."""
    import consul
    import requests

    from .backends.consul_kv import consul_client
    from .backends.consul_registry import ConsulRegistry
    from .backends.nomad_scheduler import NomadScheduler
    from .backends.s3_blob import S3BlobStore
    from .errors import ApplianceError

    out: list[tuple[str, bool, str]] = []
    try:
        r = requests.get(f"{settings.nomad_addr.rstrip('/')}/v1/status/leader", timeout=5,
                         headers={"X-Nomad-Token": settings.nomad_token} if settings.nomad_token else {})
        r.raise_for_status()
        out.append(("Nomad", True, f"{settings.nomad_addr} (leader {r.json()})"))
        nomad_ok = True
    except (requests.RequestException, ValueError) as exc:
        out.append(("Nomad", False, f"{settings.nomad_addr} does not answer: {exc}"))
        nomad_ok = False
    try:
        leader = consul_client(settings.consul_addr, settings.consul_token, 5).status.leader()
        out.append(("Consul", True, f"{settings.consul_addr} (leader {leader})"))
    except (requests.RequestException, consul.ConsulException) as exc:
        out.append(("Consul", False, f"{settings.consul_addr} does not answer: {exc}"))
    try:
        detail = S3BlobStore.from_settings(settings).check()
        out.append(("S3 code store", True, detail))
    except ApplianceError as exc:
        out.append(("S3 code store", False, exc.message))
    if nomad_ok:
        registry = ConsulRegistry(settings.consul_addr, token=settings.consul_token)
        sched = NomadScheduler(nomad_addr=settings.nomad_addr, nomad_token=settings.nomad_token,
                               consul_addr=settings.consul_addr, consul_token=settings.consul_token,
                               registry=registry, blobs=None, client=None, retry_s=1.0, maintain=False)
        try:
            for job, status in sched.jobs_status().items():
                good = status != "missing"
                out.append((f"Nomad job {job}", good, status if good else
                            "not registered: start an edge (it registers the jobs) or submit jobspecs/"))
        except ApplianceError as exc:
            out.append(("Nomad jobs", False, exc.message))
        finally:
            registry.close()
    return out
