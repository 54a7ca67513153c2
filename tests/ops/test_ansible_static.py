"""Static checks of the operations files: yamllint, ansible-lint (production profile),
`ansible-playbook --syntax-check` of every playbook against every inventory, inventory shape,
and `vagrant validate` of the Vagrantfile.

Every tool runs from the repository's virtualenv (the pinned `ansible` package ships the
collections the roles use), offline: no Ansible Galaxy.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

import hcl2
import pytest
import yaml

REPO = pathlib.Path(__file__).resolve().parents[2]
VENV_BIN = pathlib.Path(sys.executable).parent
PLAYBOOKS = sorted(p.name for p in (REPO / "playbooks").glob("*.yml"))
INVENTORIES = sorted(p.name for p in (REPO / "inventory").iterdir() if p.is_dir())
ROLES = ["common", "consul", "nomad", "appliance", "runtimes"]


def tool_env(tmp_path: pathlib.Path) -> dict[str, str]:
    return dict(
        os.environ,
        PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        ANSIBLE_LOCAL_TEMP=str(tmp_path / "ansible-tmp"),
        ANSIBLE_NOCOLOR="1",
        NO_COLOR="1",
        ANSIBLE_COLLECTIONS_PATH="",
    )


def run_tool(argv, tmp_path, cwd=REPO, **env) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=cwd, env={**tool_env(tmp_path), **env}, text=True,
                          capture_output=True, timeout=240)


def test_ansible_core_is_the_pinned_series():
    """The roles are written and tested for ansible-core 2.19 (from the pinned `ansible` package)."""
    proc = subprocess.run([str(VENV_BIN / "ansible"), "--version"], text=True, capture_output=True, check=True)
    version = proc.stdout.split("[core ", 1)[1].split("]", 1)[0]
    assert tuple(int(x) for x in version.split(".")[:2]) == (2, 19), version
    assert "ansible==12." in (REPO / "requirements-dev.txt").read_text()


def test_every_tier_has_a_playbook_and_site_imports_them():
    assert {"site.yml", "servers.yml", "clients.yml", "edge.yml"} <= set(PLAYBOOKS)
    site = yaml.safe_load((REPO / "playbooks" / "site.yml").read_text())
    assert [p["ansible.builtin.import_playbook"] for p in site] == ["servers.yml", "clients.yml", "edge.yml"]
    for role in ROLES:
        for part in ("defaults/main.yml", "tasks/main.yml", "tasks/asserts.yml", "handlers/main.yml", "meta/main.yml"):
            assert (REPO / "playbooks" / "roles" / role / part).is_file(), f"{role}/{part} missing"


def test_yamllint(tmp_path):
    proc = run_tool([str(VENV_BIN / "yamllint"), "--strict", "-c", str(REPO / "tests/ops/yamllint.yml"),
                     "playbooks", "inventory"], tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ansible_lint_production_profile(tmp_path):
    proc = run_tool([str(VENV_BIN / "ansible-lint"), "--offline", "--strict", "--profile", "production",
                     "playbooks", "inventory"], tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Profile 'production' was required, and it passed" in proc.stdout + proc.stderr


def test_ansible_lint_rejects_a_sloppy_task(tmp_path):
    """The lint test above can fail: the same command flags a task without FQCN, name or changed_when."""
    project = tmp_path / "project"
    (project / "playbooks").mkdir(parents=True)
    (project / "playbooks" / "bad.yml").write_text(
        "---\n- name: Bad\n  hosts: all\n  tasks:\n    - command: echo hello\n")
    proc = run_tool([str(VENV_BIN / "ansible-lint"), "--offline", "--strict", "--profile", "production",
                     "--project-dir", str(project), "playbooks"], tmp_path, cwd=project)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "fqcn" in out and "name[missing]" in out and "no-changed-when" in out


@pytest.mark.parametrize("inventory", INVENTORIES)
@pytest.mark.parametrize("playbook", PLAYBOOKS)
def test_syntax_check(tmp_path, inventory, playbook):
    proc = run_tool([str(VENV_BIN / "ansible-playbook"), "--syntax-check", "-i", f"inventory/{inventory}",
                     f"playbooks/{playbook}"], tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def role_defaults() -> set[str]:
    names: set[str] = set()
    for role in ROLES:
        names |= set(yaml.safe_load((REPO / "playbooks/roles" / role / "defaults/main.yml").read_text()))
    return names


@pytest.mark.parametrize("inventory", INVENTORIES)
def test_inventory_sets_only_variables_the_roles_define(inventory):
    """A misspelt role variable in group_vars would be silently ignored; catch it here."""
    known = role_defaults()
    prefixes = tuple(f"{role}_" for role in ROLES)
    for path in (REPO / "inventory" / inventory / "group_vars").glob("*.yml"):
        for name in yaml.safe_load(path.read_text()) or {}:
            if name.startswith(prefixes):
                assert name in known, f"{path.relative_to(REPO)}: {name} is not a role default"


@pytest.mark.parametrize("inventory", INVENTORIES)
def test_inventory_has_the_three_tiers(inventory):
    children = yaml.safe_load((REPO / "inventory" / inventory / "hosts.yml").read_text())["all"]["children"]
    assert {"servers", "clients", "edge"} <= set(children)
    servers = children["servers"]["hosts"]
    assert len(servers) % 2 == 1, "Consul and Nomad need an odd number of servers"


def test_vagrant_inventory_is_one_server_and_edge_plus_two_clients():
    children = yaml.safe_load((REPO / "inventory/vagrant/hosts.yml").read_text())["all"]["children"]
    assert list(children["servers"]["hosts"]) == ["node1"]
    assert list(children["edge"]["hosts"]) == ["node1"]
    assert list(children["clients"]["hosts"]) == ["node2", "node3"]
    ips = [v["faas_private_ip"] for g in ("servers", "clients") for v in children[g]["hosts"].values()]
    assert len(set(ips)) == 3 and len({ip.rsplit(".", 1)[0] for ip in ips}) == 1, "one private /24 network"


def inventory_groups(tmp_path, inventory: str) -> dict[str, list[str]]:
    """Group name -> hosts, as Ansible reads the inventory (host ranges expanded)."""
    proc = run_tool([str(VENV_BIN / "ansible-inventory"), "-i", f"inventory/{inventory}", "--list"], tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    listing = json.loads(proc.stdout)
    return {name: body.get("hosts", []) for name, body in listing.items() if name != "_meta"}


def tier_roles() -> list[tuple[str, list[str]]]:
    """(hosts pattern, roles) of every play of the tier playbooks that site.yml imports."""
    plays = []
    for imported in yaml.safe_load((REPO / "playbooks" / "site.yml").read_text()):
        for play in yaml.safe_load((REPO / "playbooks" / imported["ansible.builtin.import_playbook"]).read_text()):
            if "roles" in play:
                plays.append((play["hosts"], [r["role"] if isinstance(r, dict) else r for r in play["roles"]]))
    return plays


def jobspec_default(job_file: str, variable: str):
    spec = hcl2.loads((REPO / "jobspecs" / job_file).read_text(),
                      serialization_options=hcl2.SerializationOptions(strip_string_quotes=True, with_comments=False))
    return next(v[variable]["default"] for v in spec["variable"] if variable in v)


@pytest.mark.parametrize("inventory", INVENTORIES)
def test_every_worker_gets_what_the_nomad_jobs_run(tmp_path, inventory):
    """The function-instance and runtime-pool jobs run the appliance's virtualenv on the Nomad
    clients: every host of the clients group must get the appliance role (virtualenv and code)
    as well as nomad and runtimes, not only the servers and edge routers."""
    appliance = yaml.safe_load((REPO / "playbooks/roles/appliance/defaults/main.yml").read_text())
    venv_python = appliance["appliance_venv_dir"].replace(
        "{{ appliance_install_dir }}", appliance["appliance_install_dir"]) + "/bin/python"
    for job_file in ("function-instance.nomad.hcl", "runtime-pool.nomad.hcl"):
        assert jobspec_default(job_file, "instance_command") == venv_python, job_file

    groups = inventory_groups(tmp_path, inventory)
    plays = tier_roles()
    assert groups["clients"], f"inventory/{inventory} has no workers"
    for host in groups["clients"]:
        roles = {role for pattern, play_roles in plays
                 if host in groups.get(pattern, []) for role in play_roles}
        assert {"nomad", "runtimes", "appliance"} <= roles, f"{host} (clients) gets only {sorted(roles)}"
    clients_play = next(play_roles for pattern, play_roles in plays if pattern == "clients")
    assert clients_play.index("appliance") < clients_play.index("nomad"), \
        "the virtualenv should be in place before the Nomad client accepts work"


def render_for_a_worker(tmp_path, role_name: str, template: str, *, facts: bool = False, worker_ip: str = "10.0.0.2",
                        **overrides) -> str:
    """A role's template as the role writes it for a worker (a host of clients only), rendered here
    with the role's defaults and vars; with `facts`, this machine's network facts are the worker's."""
    role = REPO / "playbooks/roles" / role_name
    tmp_path.mkdir(parents=True, exist_ok=True)
    out = tmp_path / "rendered"
    inventory = {"all": {"children": {
        "servers": {"hosts": {"server": {"faas_private_ip": "10.0.0.1"}}},
        "clients": {"hosts": {"worker": {"faas_private_ip": worker_ip, "ansible_connection": "local",
                                         "ansible_python_interpreter": sys.executable}}},
        "edge": {"hosts": {"server": None}},
    }}}
    playbook = [{
        "name": f"Render {template}",
        "hosts": "worker",
        "gather_facts": facts,
        "gather_subset": ["min", "network"],
        "vars_files": [str(role / "defaults/main.yml"), str(role / "vars/main.yml")],
        "tasks": [{"name": "Render the template.", "ansible.builtin.template": {
            "src": str(role / "templates" / template), "dest": str(out), "mode": "0600"}}],
    }]
    (tmp_path / "hosts.json").write_text(json.dumps(inventory))
    (tmp_path / "render.yml").write_text(json.dumps(playbook))
    proc = run_tool([str(VENV_BIN / "ansible-playbook"), "-i", str(tmp_path / "hosts.json"), "-e", json.dumps(overrides),
                     str(tmp_path / "render.yml")], tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out.read_text()


def render_worker_nomad_config(tmp_path, **kwargs) -> dict:
    text = render_for_a_worker(tmp_path, "nomad", "agent.hcl.j2", nomad_encrypt_key="", **kwargs)
    return hcl2.loads(text, serialization_options=hcl2.SerializationOptions(strip_string_quotes=True, with_comments=False))


def worker_drivers(config: dict) -> tuple[dict, dict]:
    plugins = {name: body for p in config.get("plugin", []) for name, body in p.items()}
    options = {k.strip('"'): v for k, v in config["client"][0].get("options", {}).items()}
    return plugins, options


def test_worker_drivers_follow_the_settings(tmp_path):
    """Both drivers on by default; each setting turns its driver off. Nomad enables exec on its own,
    so turning it off takes the client's driver deny list, not just leaving its plugin block out."""
    config = render_worker_nomad_config(tmp_path / "default")
    assert "server" not in config and config["client"][0]["enabled"] is True
    plugins, options = worker_drivers(config)
    assert plugins["raw_exec"]["config"][0]["enabled"] is True
    assert "exec" in plugins and "driver.denylist" not in options

    plugins, options = worker_drivers(render_worker_nomad_config(
        tmp_path / "off", nomad_exec_enabled=False, nomad_raw_exec_enabled=False))
    assert plugins["raw_exec"]["config"][0]["enabled"] is False
    assert "exec" not in plugins
    assert options["driver.denylist"] == "exec"


def _seconds(duration: str) -> float:
    return float(duration[:-1]) * {"s": 1, "m": 60, "h": 3600}[duration[-1]]


def test_workers_let_every_job_use_its_kill_timeout(tmp_path):
    """Nomad caps a task's kill_timeout at the client's max_kill_timeout (30s unless configured):
    the role raises it to cover every kill_timeout the appliance's jobs ask for."""
    config = render_worker_nomad_config(tmp_path / "kill")
    cap = _seconds(config["client"][0]["max_kill_timeout"])
    asked = {}
    for job_file in sorted((REPO / "jobspecs").glob("*.nomad.hcl")):
        text = job_file.read_text()
        for m in re.finditer(r'kill_timeout\s*=\s*"(\d+[smh])"', text):
            asked[job_file.name] = max(asked.get(job_file.name, 0), _seconds(m.group(1)))
        if 'variable "kill_timeout"' in text:
            asked[job_file.name] = max(asked.get(job_file.name, 0),
                                       _seconds(jobspec_default(job_file.name, "kill_timeout")))
    assert set(asked) >= {"function-instance.nomad.hcl", "runtime-pool.nomad.hcl", "edge-router.nomad.hcl"}
    assert {f: t for f, t in asked.items() if t > cap} == {}, f"max_kill_timeout {cap}s"


def test_the_nomad_unit_waits_for_the_agent_to_be_up(tmp_path):
    unit = render_for_a_worker(tmp_path / "unit", "nomad", "nomad.service.j2",
                               _nomad_is_server=False, _nomad_is_client=True, _nomad_binary="/usr/bin/nomad")
    assert "Type=notify" in unit.splitlines()


def test_instances_listen_on_the_interface_of_the_private_address(tmp_path):
    """Nomad gives instances the address of the default route's interface unless told otherwise; the
    role names the interface that holds the worker's private address (here: loopback's 127.0.0.1)."""
    config = render_worker_nomad_config(tmp_path / "lo", facts=True, worker_ip="127.0.0.1")
    assert config["client"][0]["network_interface"] == "lo"
    # No interface holds the address (or no facts): Nomad's own choice is left alone.
    assert "network_interface" not in render_worker_nomad_config(tmp_path / "none", facts=True, worker_ip="10.255.0.77")["client"][0]


def test_faas_command_on_a_worker_talks_to_the_first_server(tmp_path):
    """On a server the `faas` command uses its own control plane; elsewhere the first server's, on
    the configured API port."""
    wrapper = render_for_a_worker(tmp_path, "appliance", "faas.sh.j2", appliance_api_port=9081)
    assert ': "${FAAS_API:=http://10.0.0.1:9081}"' in wrapper
    assert 'exec "/opt/faas-appliance/venv/bin/python" -m appliance "$@"' in wrapper


def github_anchor(heading: str) -> str:
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_readme_leads_to_each_part_of_the_operator_guide():
    """The README links to every part of the operator guide, and each link lands on a heading."""
    readme = (REPO / "README.md").read_text()
    guide = (REPO / "docs/operations.md").read_text()
    anchors = {github_anchor(h) for h in re.findall(r"^#{1,6} (.+)$", guide, re.M)}
    linked = re.findall(r"\]\(docs/operations\.md#([^)]+)\)", readme)
    for part in ("from-bare-machines", "upgrades", "adding-a-worker", "backups-of-the-metadata-store", "where-the-logs-are"):
        assert any(part in link for link in linked), f"README does not link to the guide's part on {part}"
    for link in linked:
        assert link in anchors, f"README links to docs/operations.md#{link}, which is no heading there"


def vagrant(tmp_path, *args, **env) -> subprocess.CompletedProcess:
    assert shutil.which("vagrant"), "vagrant is missing: run `make system-deps` (installs the Debian vagrant package)"
    return run_tool(["vagrant", *args], tmp_path,
                    VAGRANT_DOTFILE_PATH=str(tmp_path / "dot-vagrant"), VAGRANT_CHECKPOINT_DISABLE="1",
                    VAGRANT_NO_COLOR="1", **env)


def test_vagrant_validate(tmp_path):
    proc = vagrant(tmp_path, "validate", "--ignore-provider")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout + proc.stderr
    for node in ("node1", "node2", "node3"):
        assert f"{node}:" in out
    assert "validated successfully" in out


def test_vagrantfile_rejects_a_bad_memory_setting(tmp_path):
    """The VM sizes really come from the environment: a non-number stops Vagrant with a clear message."""
    proc = vagrant(tmp_path, "validate", "--ignore-provider", FAAS_VM_MEMORY_NODE2="lots")
    assert proc.returncode != 0
    assert 'FAAS_VM_MEMORY: expected a whole number, was: "lots"' in proc.stdout + proc.stderr
