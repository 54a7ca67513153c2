"""Cluster settings, the var-file split between jobs, and the jobspec fields the cluster backends
rely on (code URL, concurrency meta, the pool check)."""
from __future__ import annotations

import os

import pytest
import requests
from helpers import ROOT

from appliance.backends.nomad_scheduler import pool_service, vars_for
from appliance.config import Settings
from appliance.core.errors import ValidationError
from appliance.wiring import nomad_job_vars


def jobspec(name: str) -> str:
    with open(os.path.join(ROOT, "jobspecs", f"{name}.nomad.hcl")) as f:
        return f.read()


def test_cluster_settings_from_the_environment():
    s = Settings.from_env({"APPLIANCE_MODE": "cluster", "APPLIANCE_POOL_TARGET_FREE": "3",
                           "APPLIANCE_CONSUL_STALE_LIMIT_S": "15", "APPLIANCE_S3_ENDPOINT": "http://minio:9000"})
    assert (s.mode, s.pool_target_free, s.consul_stale_limit_s, s.s3_endpoint) == ("cluster", 3, 15.0,
                                                                                     "http://minio:9000")
    with pytest.raises(ValidationError, match="APPLIANCE_CONSUL_STALE_LIMIT_S"):
        Settings.from_env({"APPLIANCE_CONSUL_STALE_LIMIT_S": "0"})
    with pytest.raises(ValidationError, match="APPLIANCE_POOL_TARGET_FREE"):
        Settings.from_env({"APPLIANCE_POOL_TARGET_FREE": "-1"})


def test_each_job_gets_only_the_variables_it_declares():
    var_file = 'python_count = 2\njob_id = "function-instance-512"\ncheck_interval = "1s"\n'
    assert vars_for(jobspec("runtime-pool"), var_file) == 'python_count = 2\ncheck_interval = "1s"\n'
    assert vars_for(jobspec("function-instance"), var_file) == 'job_id = "function-instance-512"\ncheck_interval = "1s"\n'


def test_instances_get_the_instance_token_else_the_appliance_token(tmp_path, nomad_double):
    assert nomad_job_vars(Settings()) == ""
    assert nomad_job_vars(Settings(consul_token="app")) == 'consul_token = "app"\n'
    narrow = Settings.from_env({"APPLIANCE_CONSUL_TOKEN": "app", "APPLIANCE_INSTANCE_CONSUL_TOKEN": "inst"})
    var_file = tmp_path / "vars.hcl"
    var_file.write_text('python_count = 2')
    with_file = Settings(consul_token="app", instance_consul_token="inst", nomad_vars_file=str(var_file))
    assert nomad_job_vars(narrow) == 'consul_token = "inst"\n'
    assert nomad_job_vars(with_file) == 'python_count = 2\nconsul_token = "inst"\n'
    # An assignment in the operator's file wins.
    var_file.write_text('consul_token = "from-file"\n')
    assert nomad_job_vars(with_file) == 'consul_token = "from-file"\n'
    # Quotes and template sequences reach the task literally, through both jobs' var-file split.
    odd = 'a"b\\c${d}%{e}'
    for name in ("runtime-pool", "function-instance"):
        hcl = jobspec(name)
        r = requests.post(nomad_double.url + "/v1/jobs/parse", timeout=30, json={
            "JobHCL": hcl, "Variables": vars_for(hcl, nomad_job_vars(Settings(instance_consul_token=odd)))})
        assert r.status_code == 200, r.text
        assert {t["Env"]["CONSUL_HTTP_TOKEN"] for tg in r.json()["TaskGroups"] for t in tg["Tasks"]} == {odd}


def test_pool_service_names_follow_the_jobspec():
    assert pool_service("python3.11") == "faas-pool-python3-11"
    assert pool_service("nodejs20") == "faas-pool-nodejs20"


def test_jobspec_fields_the_cluster_backends_use(nomad_double):
    def parse(name):
        r = requests.post(nomad_double.url + "/v1/jobs/parse", json={"JobHCL": jobspec(name)}, timeout=30)
        assert r.status_code == 200, r.text
        return r.json()

    fi = parse("function-instance")
    task = fi["TaskGroups"][0]["Tasks"][0]
    assert "code_url" in fi["ParameterizedJob"]["MetaOptional"] and fi["Meta"]["code_url"] == ""
    assert task["Env"]["FAAS_CODE_URL"] == "${NOMAD_META_code_url}"
    assert task["Services"][0]["Meta"]["concurrency"] == "${NOMAD_META_concurrency}"
    pool = parse("runtime-pool")
    for tg in pool["TaskGroups"]:
        t = tg["Tasks"][0]
        assert t["Services"][0]["Checks"][0]["Path"] == "/_/pool"
        assert t["Env"]["FAAS_CHECK_INTERVAL"] and t["Env"]["CONSUL_HTTP_ADDR"]
        assert t["Services"][0]["Name"] == "faas-pool-${NOMAD_META_pool_service_suffix}"
        assert pool_service(tg["Meta"]["runtime"]) == "faas-pool-" + tg["Meta"]["pool_service_suffix"]
