"""Prometheus metrics after real traffic: the names and labels on the control API's /metrics and the
edge's /_/metrics."""

import requests
from prometheus_client.parser import text_string_to_metric_families

FAILING = "def handler(event, context):\n    raise KeyError('boom-req')\n"


def scrape(url: str, token: str) -> dict[str, list]:
    r = requests.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return {f.name: f.samples for f in text_string_to_metric_families(r.text)}


def value(fams, family, name, **labels):
    return sum(s.value for s in fams[family] if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def test_metrics_after_real_traffic(appliance):
    ok = appliance.deploy(trigger=("GET", "/metrics-ok"))
    bad = appliance.deploy({"index.py": FAILING}, trigger=("GET", "/metrics-bad"))
    with requests.Session() as s:  # a kept-alive connection the edge counts
        for _ in range(5):
            assert s.get(appliance.edge + "/metrics-ok", timeout=30).status_code == 200
        rids = []
        for _ in range(2):
            r = s.get(appliance.edge + "/metrics-bad", timeout=30)
            assert r.status_code == 502
            rids.append(r.headers["X-Request-Id"])

        # The edge's /_/ paths answer the appliance's internal credential; the control API a read token.
        internal = (appliance.data_dir / "internal.token").read_text().strip()
        edge = scrape(appliance.edge + "/_/metrics", internal)
        assert value(edge, "faas_edge_connections", "faas_edge_connections") >= 1

    control = scrape(appliance.api_url + "/metrics", appliance.token)
    for fams in (edge, control):  # embedded mode: one process, the same numbers on both
        assert value(fams, "faas_invocations", "faas_invocations_total", function=ok, status="ok") == 5
        assert value(fams, "faas_invocations", "faas_invocations_total", function=bad, status="error") == 2
        assert value(fams, "faas_invocation_errors", "faas_invocation_errors_total", function=bad,
                     code="Function.Error") == 2
        assert value(fams, "faas_cold_starts", "faas_cold_starts_total", function=ok, cause="no-instance") == 1
        assert value(fams, "faas_invocation_duration_seconds", "faas_invocation_duration_seconds_count",
                     function=ok) == 5
        assert value(fams, "faas_queue_wait_seconds", "faas_queue_wait_seconds_count", function=ok) == 5
        assert value(fams, "faas_cold_start_phase_seconds", "faas_cold_start_phase_seconds_count",
                     phase="runtime_init") >= 1
        assert value(fams, "faas_instances", "faas_instances", function=ok, state="idle") == 1
        assert "faas_backend_errors" in fams and "faas_queued_requests" in fams
        assert "process_resident_memory_bytes" in fams or "process_cpu_seconds" in fams
        text = str(fams)
        assert not any(rid in text for rid in rids), "request ids must never be labels"
