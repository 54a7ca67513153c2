"""The real-applications benchmark's pure parts: cache keys, pins, rows, ratios, targets, template
discovery, the serverless-offline service and the report section."""

import json
import re

import pytest
import yaml  # PyYAML, with yamllint (requirements-dev.txt)

from bench import report
from bench.realapps import APPS, ORDER, App, build, check_answer
from bench.realapps.evaluate import (
    COLD_P50_LIMIT_MS,
    METRICS,
    MODES,
    cold_kinds,
    compute,
    find_template,
    mode_ratios,
    row,
    targets,
)
from bench.realapps.run import Plan, refused_snapshot, serverless_yml

REQS = "flask==3.1.3\nwerkzeug==3.1.9\n"


def test_cache_key_follows_the_requirements_text_and_python():
    k = build.cache_key(REQS, "3.11")
    assert re.fullmatch(r"[0-9a-f]{16}", k)
    assert build.cache_key(REQS, "3.11") == k
    assert build.cache_key(REQS.replace("3.1.3", "3.1.2"), "3.11") != k
    assert build.cache_key(REQS + "# a comment\n", "3.11") != k      # the file's hash, nothing parsed
    assert build.cache_key(REQS, "3.12") != k                          # wheels are per minor version
    # No ambiguity from concatenation: the parts are separated.
    assert build.cache_key("3.11", "x") != build.cache_key("x", "3.11")


def test_bundle_key_follows_the_dependencies_and_the_app_sources():
    k = build.bundle_key("deps-a-1", {"app.py": b"x = 1\n"})
    assert build.bundle_key("deps-a-1", {"app.py": b"x = 1\n"}) == k
    assert build.bundle_key("deps-a-2", {"app.py": b"x = 1\n"}) != k
    assert build.bundle_key("deps-a-1", {"app.py": b"x = 2\n"}) != k
    assert build.bundle_key("deps-a-1", {"app.py": b"x = 1\n", "util.py": b""}) != k


@pytest.mark.parametrize("name", list(APPS))
def test_every_app_pins_exact_versions(name):
    app = APPS[name]
    assert (app.dir / "app.py").is_file()
    pins = [ln.strip() for ln in app.requirements.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    assert pins
    for ln in pins:
        assert re.fullmatch(r"[A-Za-z0-9_.\-]+==[0-9][0-9A-Za-z.]*", ln), f"{name}: {ln!r} is not an exact pin"
    names = [ln.split("==")[0].lower().replace("_", "-") for ln in pins]
    assert len(names) == len(set(names)), f"{name} pins a package twice"


def test_check_answer():
    app = APPS["flask_app"]
    check_answer(app, 200, json.dumps({"app": "flask", "quantity": ORDER["quantity"]}).encode())
    with pytest.raises(RuntimeError, match="flask_app answered 500"):
        check_answer(app, 500, b"{}")
    with pytest.raises(RuntimeError):
        check_answer(app, 200, json.dumps({"app": "fastapi", "quantity": ORDER["quantity"]}).encode())
    with pytest.raises(RuntimeError):
        check_answer(app, 200, b"not json")


def _result(p50, p99=None, warm=1.0, uss=20.0, pss=25.0, **extra):
    return {"available": True, "cold_ms": {"p50": p50, "p99": p99 or p50 * 1.2}, "warm_ms": {"p50": warm},
            "memory": {"uss_mb": uss, "pss_mb": pss}, **extra}


def test_row_of_a_missing_or_failed_mode_is_empty():
    empty = {m: None for m in METRICS}
    assert row(None) == empty
    assert row({"available": False, "reason": "unknown field"}) == empty
    assert row(dict(_result(100), error="boom")) == empty
    assert row(_result(100, 150, 2.0, 30.0, 35.0)) == {"cold_p50_ms": 100, "cold_p99_ms": 150, "warm_p50_ms": 2.0,
                                                        "uss_mb": 30.0, "pss_mb": 35.0}


def test_mode_ratios():
    rows = {"snapshot": row(_result(10, warm=1.0, uss=10)), "no-snapshot": row(_result(200, warm=2.0, uss=20))}
    r = mode_ratios(rows, "snapshot", "no-snapshot")
    assert r["cold_p50_ms"] == pytest.approx(0.05)
    assert r["warm_p50_ms"] == pytest.approx(0.5)
    assert r["uss_mb"] == pytest.approx(0.5)
    assert mode_ratios(rows, "snapshot", "serverless-offline") == {m: None for m in METRICS}


@pytest.mark.parametrize("snap,off,sls,met", [
    (15.0, 200.0, 400.0, [True, True, True]),
    (20.0, 200.0, 400.0, [True, True, True]),          # the limits are inclusive
    (25.0, 200.0, 400.0, [False, False, False]),       # 25/200 = 0.125, 25/400 = 0.0625
    (15.0, 100.0, 400.0, [True, False, True]),          # 0.15 of no-snapshot
    (15.0, 200.0, 250.0, [True, True, False]),          # 0.06 of serverless-offline
    (None, 200.0, 400.0, [None, None, None]),           # snapshot mode not available
    (15.0, None, 400.0, [True, None, True]),
])
def test_targets(snap, off, sls, met):
    rows = {"snapshot": {"cold_p50_ms": snap}, "no-snapshot": {"cold_p50_ms": off},
            "serverless-offline": {"cold_p50_ms": sls}}
    ts = targets(rows)
    assert [t["met"] for t in ts] == met
    assert [t["limit"] for t in ts] == [COLD_P50_LIMIT_MS, pytest.approx(0.1), pytest.approx(0.05)]
    if snap is not None and off is not None:
        assert ts[1]["measured"] == pytest.approx(snap / off)


def test_compute_today_without_snapshots():
    apps = {"flask_app": {"modes": {"snapshot": {"available": False, "reason": "unknown field"},
                                    "no-snapshot": _result(120), "serverless-offline": _result(160)}}}
    c = compute(apps)["flask_app"]
    assert c["metrics"]["snapshot"]["cold_p50_ms"] is None
    assert c["ratios"]["snapshot/no-snapshot"]["cold_p50_ms"] is None
    assert c["ratios"]["no-snapshot/serverless-offline"]["cold_p50_ms"] == pytest.approx(0.75)
    assert [t["met"] for t in c["targets"]] == [None, None, None]


def test_cold_kinds_counts_the_causes():
    timings = [{"cold": "snapshot", "restore": 2.0}, {"cold": "snapshot"}, {"cold": "no-instance"}, {"run": 1.0},
               {"cold": True}]
    assert cold_kinds(timings) == {"snapshot": 2, "no-instance": 1, "warm": 1, "cold": 1}


def test_find_template():
    assert find_template({"name": "f", "instances": []}) is None
    assert find_template({"status": "ok", "functions": 3}) is None
    assert find_template(None) is None
    t = find_template({"name": "f", "snapshot": {"state": "ready", "pid": 4242, "pss_bytes": 3 * 2**20}})
    assert t["source"] == "snapshot" and t["pid"] == 4242 and t["pss_mb"] == pytest.approx(3.0)
    t = find_template({"snapshot": {"mode": "auto", "template": {"pid": 7}, "uss_mb": 1.5}})
    assert t["pid"] == 7 and t["uss_mb"] == 1.5
    t = find_template({"templates": [{"function": "f", "rss_mb": 9}]})
    assert t["source"] == "templates" and t["rss_mb"] == 9 and "pid" not in t
    t = find_template({"runtime": {"snapshots": {"count": 1, "uss_mb": 2}}})      # one level down
    assert t["uss_mb"] == 2
    assert find_template({"snapshot": "auto"}) is None          # the setting alone is no template


def test_plan_sizes():
    full, quick = Plan.make(False), Plan.make(True)
    assert 15 <= full.cold_runs <= 20 and quick.cold_runs < full.cold_runs
    assert quick.cold_budget_s < full.cold_budget_s
    assert Plan.make(True, cold_runs=3).cold_runs == 3


def test_serverless_yml_imports_each_app_from_its_bundle(tmp_path):
    bundles = {n: tmp_path / f"bundle-{n}" for n in APPS}
    text = serverless_yml(bundles, list(APPS))
    doc = yaml.safe_load(text)
    assert doc["provider"]["runtime"] == "python3.11"
    assert doc["plugins"] == ["serverless-offline"]
    for n, app in APPS.items():
        fn = doc["functions"][n.replace("_", "-")]
        assert fn["handler"] == "app.handler"
        assert fn["environment"]["PYTHONPATH"] == str(bundles[n])
        for k, v in app.env.items():
            assert fn["environment"][k] == v
        assert fn["events"] == [{"httpApi": {"method": "POST", "path": app.path()}}]


def _doc(realapps):
    return {"mode": "quick", "started_at": "t", "results": {}, "computed": {"metrics": {}, "ratios": {}},
            "plan": {"cold_runs": 1, "rounds": 1, "round_s": 1.0},
            "environment": {"cpus": 2, "kernel": "k", "python": "3.11"}, "realapps": realapps}


def test_report_section():
    apps = {"flask_app": {"label": "Flask + apig-wsgi", "modes": {
        "snapshot": {"available": False, "reason": "this appliance does not know the `snapshot` setting"},
        "no-snapshot": _result(120.0, template=None, cold_phases_p50_ms={"user_init": 100.0},
                               cold_causes={"no-instance": 5}),
        "serverless-offline": _result(160.0)}}}
    ra = {"plan": {"cold_runs": 5, "cold_discarded": 1, "warm_requests": 10, "memory_mb": 256}, "apps": apps,
          "computed": compute(apps), "notes": ["a note"], "seconds": 30, "cold_phase_s": 20}
    text = report.render(_doc(ra))
    assert "Peers: none selected" in text
    assert "| Flask + apig-wsgi | appliance, snapshot auto | not available | - |" in text
    assert "| Flask + apig-wsgi | appliance, snapshot off | 120 | 144 | 1.00 | 20.0 | 25.0 | n/a |" in text
    assert "x0.75" in text                                   # no-snapshot / serverless-offline, cold p50
    assert "snapshot cold p50 <= 20 ms | <= 20 ms | - | not measured |" in text
    assert "user_init 100.0" in text and "no-instance x5" in text and "note: a note" in text
    ra_failed = dict(ra, apps={"flask_app": dict(apps["flask_app"], modes=dict(
        apps["flask_app"]["modes"], **{"serverless-offline": dict(_result(1.0), error="RuntimeError: x")}))})
    assert "| serverless-offline | failed |" in report.render(_doc(ra_failed))
    assert "FAILED: vendoring failed" in report.render(_doc({"error": "vendoring failed: pip"}))


def test_app_paths_are_distinct():
    assert len({a.path() for a in APPS.values()}) == len(APPS)
    assert App("x", "X", "/x").path("/snap/x") == "/snap/x/orders"
    assert set(MODES) == {"snapshot", "no-snapshot", "serverless-offline"}


def test_refused_snapshot_is_only_the_unknown_setting():
    assert refused_snapshot(400, "snapshot", "unknown field 'snapshot'; known fields are: ...")
    assert refused_snapshot(400, None, "unknown field 'snapshot'; known fields are: ...")
    assert not refused_snapshot(400, "memory_mb", "memory_mb must be within 128..10240")
    assert not refused_snapshot(500, "snapshot", "boom")
    assert not refused_snapshot(409, None, "trigger POST /off/flask/orders is bound to function 'x'")
