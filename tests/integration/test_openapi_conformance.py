"""The control API against its OpenAPI document, with schemathesis against a live appliance.

Bounded: a fixed seed, a few examples per operation, one worker. Every answer must match the
document (status, content type, body schema), no answer may be a 5xx the document does not list
(the invoke operation's 502/503/504 are the function's own failures, documented), invalid input
must be refused, undeclared methods must be answered 405 with Allow, and a deleted resource must
be gone. ``positive_data_acceptance`` is left out: the document states the shapes, and some valid
shapes are still refused for what JSON Schema cannot say (a zip's content, a route that clashes,
a name already taken); those refusals are 4xx with a stable code and are checked for that.
"""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import requests

HERE = Path(__file__).resolve().parent
CHECKS = ("not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,"
          "response_schema_conformance,negative_data_rejection,unsupported_method,allow_header_conformance,"
          "use_after_free,ensure_resource_availability")


@pytest.mark.slow
def test_the_control_api_conforms_to_its_openapi_document(make_appliance, tmp_path):
    app = make_appliance(env={"APPLIANCE_START_TIMEOUT_S": "5", "APPLIANCE_QUEUE_TIMEOUT_S": "5"})
    app.deploy(name="conform")  # see schemathesis.toml
    st = Path(sys.executable).with_name("st")
    cmd = [str(st), "--config-file", str(HERE / "schemathesis.toml"), "run", f"{app.api_url}/v1/openapi.json",
           "--checks", CHECKS, "--max-examples", "8", "--seed", "17", "--workers", "1", "--no-shrink",
           "--request-timeout", "20", "--report", "ndjson", "--report-dir", str(tmp_path / "report"),
           "--output-truncate", "false", "--suppress-health-check", "all",
           "--header", f"Authorization: Bearer {app.token}"]
    run = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-20000:] + run.stderr[-5000:]
    # It tested every documented operation, and the function's invocations ran.
    selected = re.search(r"Selected: (\d+)/(\d+)", run.stdout)
    tested = re.search(r"Tested: (\d+)", run.stdout)
    assert selected and tested and selected[1] == selected[2] == tested[1], run.stdout[-3000:]
    assert int(tested[1]) >= 20
    # (Counted by the metrics: the run may delete and re-create `conform`, which hides older records.)
    metrics = app.http.get(f"{app.api_url}/metrics", timeout=10).text
    assert re.search(r'^faas_invocations_total\{function="conform",status="\w+"\} [1-9]', metrics, re.M), \
        "no invocation of the prepared function was made"
