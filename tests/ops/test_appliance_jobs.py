"""The appliance role's Nomad job registration, run for real by Ansible against a small stand-in
of the three Nomad endpoints it calls (the real Nomad binary cannot run here).

The stand-in follows the Nomad HTTP API on the points the role relies on:
- `POST /v1/jobs/parse` takes `JobHCL`, `Variables` (HCL2 var-file text) and `Canonicalize`, and
  answers with the bare Job object;
- `POST /v1/job/<id>/plan` with `Diff: true` answers `{"Diff": {"Type": "Added"|"Edited"|"None"}}`,
  comparing with the registered job;
- `POST /v1/jobs` takes `{"Job": ...}` and stores it.
The test proves that jobs are registered once, that an unchanged run registers nothing
(changed=0), and that a changed variable re-registers exactly that job.
"""

from __future__ import annotations

import http.server
import json
import os
import pathlib
import re
import subprocess
import sys
import threading

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
VENV_BIN = pathlib.Path(sys.executable).parent


class FakeNomad(http.server.ThreadingHTTPServer):
    def __init__(self):
        super().__init__(("127.0.0.1", 0), NomadHandler)
        self.jobs: dict[str, dict] = {}
        self.registrations: list[str] = []
        self.parse_bodies: list[dict] = []
        self.register_bodies: list[dict] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class NomadHandler(http.server.BaseHTTPRequestHandler):
    server: FakeNomad

    def log_message(self, *args):
        pass

    def reply(self, status: int, body) -> None:
        data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json" if not isinstance(body, str) else "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):  # noqa: N802 (http.server's naming)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path == "/v1/jobs/parse":
            self.server.parse_bodies.append(body)
            if not body.get("JobHCL"):
                return self.reply(400, "Job spec is empty")
            m = re.search(r'^job\s+"([^"]+)"', body["JobHCL"], re.M)
            if not m:
                return self.reply(400, "Failed to parse job: no job block")
            return self.reply(200, {"ID": m.group(1), "Name": m.group(1), "Type": "service",
                                    "Meta": {"variables": body.get("Variables", "")}})
        m = re.fullmatch(r"/v1/job/([^/]+)/plan", self.path)
        if m:
            job = body["Job"]
            if job["ID"] != m.group(1):
                return self.reply(400, "Job ID does not match")
            old = self.server.jobs.get(job["ID"])
            diff = "Added" if old is None else ("None" if old == job else "Edited")
            return self.reply(200, {"Diff": {"Type": diff, "ID": job["ID"]}, "Annotations": {}})
        if self.path == "/v1/jobs":
            job = body["Job"]
            self.server.register_bodies.append(body)
            self.server.jobs[job["ID"]] = job
            self.server.registrations.append(job["ID"])
            return self.reply(200, {"EvalID": "", "JobModifyIndex": len(self.server.registrations)})
        return self.reply(404, "Not found")


@pytest.fixture
def nomad():
    server = FakeNomad()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    thread.join()


def run_registration(tmp_path: pathlib.Path, nomad: FakeNomad, jobs: list[dict] | None, files: list[dict], **settings):
    """Run the role's job registration; ``jobs`` None keeps the role's default `appliance_nomad_jobs`."""
    source = tmp_path / "src"
    (source / "jobspecs").mkdir(parents=True, exist_ok=True)
    for job in files:
        (source / "jobspecs" / job["file"]).write_text(
            f'variable "image" {{\n  type = string\n}}\n\njob "{job["name"]}" {{\n  type = "service"\n}}\n')
    playbook = tmp_path / "register.yml"
    playbook.write_text(
        "- name: Register the appliance's jobs\n"
        "  hosts: localhost\n"
        "  connection: local\n"
        "  gather_facts: false\n"
        "  tasks:\n"
        "    - name: Run the appliance role's job registration.\n"
        "      ansible.builtin.include_role:\n"
        "        name: appliance\n"
        "        tasks_from: jobs.yml\n")
    extra = {
        "ansible_python_interpreter": sys.executable,
        "appliance_source_dir": str(source),
        "appliance_nomad_addr": nomad.url,
        **({"appliance_nomad_jobs": jobs} if jobs is not None else {}),
        **settings,
    }
    env = dict(
        os.environ,
        PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        ANSIBLE_ROLES_PATH=str(REPO / "playbooks" / "roles"),
        ANSIBLE_STDOUT_CALLBACK="ansible.posix.json",
        ANSIBLE_LOCAL_TEMP=str(tmp_path / "ansible-tmp"),
        ANSIBLE_COLLECTIONS_PATH="",
        ANSIBLE_LOCALHOST_WARNING="0",
        ANSIBLE_INVENTORY_UNPARSED_WARNING="0",
    )
    return subprocess.run(
        [str(VENV_BIN / "ansible-playbook"), "-i", "localhost,", "-e", json.dumps(extra), str(playbook)],
        cwd=tmp_path, env=env, text=True, capture_output=True, timeout=120,
    )


def register_jobs(tmp_path: pathlib.Path, nomad: FakeNomad, jobs: list[dict]) -> dict:
    proc = run_registration(tmp_path, nomad, jobs, files=jobs)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return json.loads(proc.stdout)["stats"]["localhost"]


def test_jobs_are_registered_once_and_again_only_when_they_change(tmp_path, nomad):
    jobs = [
        {"name": "runtime-pool", "file": "runtime-pool.nomad.hcl", "variables": {"image": "python3", "count": 2}},
        {"name": "function-instance", "file": "function-instance.nomad.hcl", "variables": {}},
    ]
    first = register_jobs(tmp_path, nomad, jobs)
    assert nomad.registrations == ["runtime-pool", "function-instance"]
    assert first["changed"] == 2
    # Variables reach Nomad as var-file text, one HCL assignment per line.
    assert nomad.parse_bodies[0]["Variables"].splitlines() == ['count = 2', 'image = "python3"']
    assert nomad.parse_bodies[0]["Canonicalize"] is True

    second = register_jobs(tmp_path, nomad, jobs)
    assert nomad.registrations == ["runtime-pool", "function-instance"], "unchanged jobs were registered again"
    assert second["changed"] == 0

    jobs[0]["variables"]["count"] = 3
    third = register_jobs(tmp_path, nomad, jobs)
    assert nomad.registrations[2:] == ["runtime-pool"]
    assert third["changed"] == 1
    # Every registration keeps the group counts Nomad has (the pool the appliance scaled).
    assert [b.get("PreserveCounts") for b in nomad.register_bodies] == [True, True, True]


def test_a_missing_job_file_stops_the_run_before_any_registration(tmp_path, nomad):
    present = {"name": "runtime-pool", "file": "runtime-pool.nomad.hcl", "variables": {}}
    missing = {"name": "edge-router", "file": "edge-router.nomad.hcl", "variables": {}}
    proc = run_registration(tmp_path, nomad, [present, missing], files=[present])
    assert proc.returncode != 0
    assert re.search(r"job edge-router: no file \S*/jobspecs/edge-router.nomad.hcl", proc.stdout), proc.stdout[-4000:]
    assert nomad.registrations == []


def test_service_jobs_carry_the_appliance_settings(tmp_path, nomad):
    """With appliance_service_manager: nomad, the edge router and the control plane run as Nomad jobs;
    the S3 settings, the edge port, the virtualenv and the ACL tokens reach them as job variables."""
    files = [{"name": "control-plane", "file": "control-plane.nomad.hcl"},
             {"name": "edge-router", "file": "edge-router.nomad.hcl"}]
    proc = run_registration(tmp_path, nomad, [], files, appliance_service_manager="nomad",
                            appliance_s3_endpoint="http://minio.internal:9000", appliance_s3_bucket="code",
                            appliance_s3_region="eu-west-1", appliance_edge_port=8088,
                            appliance_consul_token="c-tok", appliance_nomad_token="n-tok")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert nomad.registrations == ["control-plane", "edge-router"]
    control, edge = (body["Variables"].splitlines() for body in nomad.parse_bodies)
    s3 = ['s3_bucket = "code"', 's3_endpoint = "http://minio.internal:9000"', 's3_region = "eu-west-1"']
    python = 'python = "/opt/faas-appliance/venv/bin/python"'
    tokens = ['consul_token = "c-tok"', 'nomad_token = "n-tok"']
    # The appliance's own credentials (made per environment by the role): the admin token only as
    # its hash, the internal credential and the secrets key as such; never printed by the role.
    creds = {line.split(" = ")[0]: line.split(" = ")[1].strip('"') for line in control
             if line.split(" = ")[0] in ("admin_token", "internal_token", "secrets_key")}
    assert sorted(creds) == ["admin_token", "internal_token", "secrets_key"]
    assert creds["admin_token"].startswith("sha256:") and len(creds["admin_token"]) == 7 + 64
    assert len(creds["internal_token"]) >= 32 and len(creds["secrets_key"]) >= 32
    assert [line for line in edge if line.startswith(("internal_token", "secrets_key"))] == \
        [f'internal_token = "{creds["internal_token"]}"', f'secrets_key = "{creds["secrets_key"]}"']
    assert creds["internal_token"] not in proc.stdout and creds["secrets_key"] not in proc.stdout
    rest = [line for line in control if line.split(" = ")[0] not in creds]
    assert rest == [tokens[0], tokens[1], python, *s3]
    assert [line for line in edge if not line.startswith(("internal_token", "secrets_key"))] == \
        [tokens[0], "http_port = 8088", tokens[1], python, *s3]


@pytest.mark.parametrize("settings, token", [
    ({"appliance_consul_token": "app"}, "app"),
    ({"appliance_consul_token": "app", "appliance_instance_consul_token": "inst"}, "inst"),
])
def test_instance_jobs_carry_the_instance_consul_token(tmp_path, nomad, settings, token):
    """With Consul ACLs on, instances need a token for their own Consul calls: the role's default
    jobs pass appliance_instance_consul_token, else appliance_consul_token, as consul_token."""
    files = [{"name": "runtime-pool", "file": "runtime-pool.nomad.hcl"},
             {"name": "function-instance", "file": "function-instance.nomad.hcl"}]
    proc = run_registration(tmp_path, nomad, None, files, **settings)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert nomad.registrations == ["runtime-pool", "function-instance"]
    assert [body["Variables"].splitlines() for body in nomad.parse_bodies] == [[f'consul_token = "{token}"']] * 2
