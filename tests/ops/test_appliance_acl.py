"""The appliance role's ACL tasks, run for real by Ansible against small stand-ins of the Consul and
Nomad ACL endpoints they call (the real binaries cannot run here):

- Consul: `GET /v1/acl/policy/name/<name>` (403 when missing: "ACL not found"), `PUT /v1/acl/policy`
  (create), `PUT /v1/acl/policy/<id>` (update), `GET /v1/acl/token/self` (403 for an unknown
  SecretID), `PUT /v1/acl/token` with a caller-chosen SecretID;
- Nomad: `GET /v1/acl/policy/<name>` (404 when missing), `POST /v1/acl/policy/<name>`.

The policies applied are the role's files, each once; a second run changes nothing; a changed
file is updated in place. The policies themselves are exercised by the doubles in
tests/cluster/test_nomad_scheduler.py::test_the_shipped_acl_policies_are_enough."""
from __future__ import annotations

import http.server
import json
import os
import pathlib
import re
import subprocess
import sys
import threading
import uuid

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
VENV_BIN = pathlib.Path(sys.executable).parent
MGMT = "11111111-1111-1111-1111-111111111111"


class Stand(http.server.ThreadingHTTPServer):
    def __init__(self):
        super().__init__(("127.0.0.1", 0), Handler)
        self.consul_policies: dict[str, dict] = {}
        self.consul_tokens: dict[str, list] = {MGMT: ["global-management"]}
        self.nomad_policies: dict[str, dict] = {}
        self.writes: list[str] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class Handler(http.server.BaseHTTPRequestHandler):
    server: Stand

    def log_message(self, *args):
        pass

    def reply(self, status, body):
        data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain" if isinstance(body, str) else "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def body(self):
        return json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")

    def mgmt(self, header):
        return self.headers.get(header) == MGMT

    def do_GET(self):  # noqa: N802
        s = self.server
        if m := re.fullmatch(r"/v1/acl/policy/name/(.+)", self.path):
            if not self.mgmt("X-Consul-Token"):
                return self.reply(403, "Permission denied")
            p = s.consul_policies.get(m.group(1))
            return self.reply(200, p) if p else self.reply(403, "ACL not found")
        if self.path == "/v1/acl/token/self":
            t = self.headers.get("X-Consul-Token")
            return self.reply(200, {"SecretID": t}) if t in s.consul_tokens else self.reply(403, "ACL not found")
        if m := re.fullmatch(r"/v1/acl/policy/(.+)", self.path):
            if not self.mgmt("X-Nomad-Token"):
                return self.reply(403, "Permission denied")
            p = s.nomad_policies.get(m.group(1))
            return self.reply(200, p) if p else self.reply(404, "ACL policy not found")
        return self.reply(404, "no such path")

    def do_PUT(self):  # noqa: N802
        s = self.server
        if not self.mgmt("X-Consul-Token"):
            return self.reply(403, "Permission denied")
        body = self.body()
        if self.path == "/v1/acl/policy":
            if body["Name"] in s.consul_policies:
                return self.reply(500, "Invalid Policy: A Policy with Name already exists")
            s.consul_policies[body["Name"]] = {**body, "ID": str(uuid.uuid4())}
            s.writes.append(f"consul policy create {body['Name']}")
            return self.reply(200, s.consul_policies[body["Name"]])
        if m := re.fullmatch(r"/v1/acl/policy/(.+)", self.path):
            (name,) = [n for n, p in s.consul_policies.items() if p["ID"] == m.group(1)]
            s.consul_policies[name].update(body)
            s.writes.append(f"consul policy update {name}")
            return self.reply(200, s.consul_policies[name])
        if self.path == "/v1/acl/token":
            s.consul_tokens[body["SecretID"]] = [p["Name"] for p in body["Policies"]]
            s.writes.append(f"consul token {body['Policies'][0]['Name']}")
            return self.reply(200, body)
        return self.reply(404, "no such path")

    def do_POST(self):  # noqa: N802
        s = self.server
        if not self.mgmt("X-Nomad-Token"):
            return self.reply(403, "Permission denied")
        if m := re.fullmatch(r"/v1/acl/policy/(.+)", self.path):
            body = self.body()
            if body["Name"] != m.group(1):
                return self.reply(400, "Policy name does not match request path")
            s.nomad_policies[body["Name"]] = body
            s.writes.append(f"nomad policy {body['Name']}")
            return self.reply(200, "")
        return self.reply(404, "no such path")


@pytest.fixture
def stand():
    server = Stand()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()


def run_acl(tmp_path, stand, role_dir=REPO / "playbooks" / "roles", **settings):
    playbook = tmp_path / "acl.yml"
    playbook.write_text(
        "- name: Apply the ACL policies\n  hosts: localhost\n  connection: local\n  gather_facts: false\n"
        "  tasks:\n    - name: Run the appliance role's ACL tasks.\n      ansible.builtin.include_role:\n"
        "        name: appliance\n        tasks_from: acl.yml\n")
    extra = {"ansible_python_interpreter": sys.executable, "appliance_consul_addr": stand.url,
             "appliance_nomad_addr": stand.url, "appliance_acl_consul_management_token": MGMT,
             "appliance_acl_nomad_management_token": MGMT, **settings}
    env = dict(os.environ, PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
               ANSIBLE_ROLES_PATH=str(role_dir), ANSIBLE_STDOUT_CALLBACK="ansible.posix.json",
               ANSIBLE_LOCAL_TEMP=str(tmp_path / "ansible-tmp"), ANSIBLE_COLLECTIONS_PATH="",
               ANSIBLE_LOCALHOST_WARNING="0", ANSIBLE_INVENTORY_UNPARSED_WARNING="0")
    proc = subprocess.run([str(VENV_BIN / "ansible-playbook"), "-i", "localhost,", "-e", json.dumps(extra),
                           str(playbook)], cwd=tmp_path, env=env, text=True, capture_output=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return json.loads(proc.stdout)["stats"]["localhost"]


APP, INST = "22222222-2222-2222-2222-222222222222", "33333333-3333-3333-3333-333333333333"


def test_policies_and_tokens_are_applied_once_and_updated_when_a_file_changes(tmp_path, stand):
    acl = REPO / "playbooks/roles/appliance/files/acl"
    first = run_acl(tmp_path, stand, appliance_consul_token=APP, appliance_instance_consul_token=INST)
    assert sorted(stand.consul_policies) == ["faas-appliance", "faas-autoscaler", "faas-instance", "faas-nomad-agent"]
    assert stand.consul_policies["faas-instance"]["Rules"] == (acl / "consul-instance.hcl").read_text().rstrip("\n")
    assert sorted(stand.nomad_policies) == ["faas-appliance", "faas-autoscaler"]
    assert stand.nomad_policies["faas-appliance"]["Rules"] == (acl / "nomad-appliance.hcl").read_text().rstrip("\n")
    assert stand.consul_tokens[APP] == ["faas-appliance"] and stand.consul_tokens[INST] == ["faas-instance"]
    assert len(stand.writes) == 4 + 2 + 2 and first["changed"] > 0

    assert run_acl(tmp_path, stand, appliance_consul_token=APP, appliance_instance_consul_token=INST)["changed"] == 0

    # A changed policy file (here in a copy of the roles) is updated in place, nothing else.
    roles = tmp_path / "roles"
    subprocess.run(["cp", "-r", str(REPO / "playbooks/roles"), str(roles)], check=True)
    f = roles / "appliance/files/acl/consul-instance.hcl"
    f.write_text(f.read_text() + '\nsession_prefix "" {\n  policy = "deny"\n}\n')
    stand.writes.clear()
    third = run_acl(tmp_path, stand, role_dir=roles, appliance_consul_token=APP, appliance_instance_consul_token=INST)
    assert stand.writes == ["consul policy update faas-instance"] and third["changed"] == 1
