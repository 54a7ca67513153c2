"""A real run of site.yml against a minimal Debian root, through Ansible's chroot connection.

What is real here: the Debian root (made with debootstrap from the apt mirror this machine uses),
every role of playbooks/site.yml with its real modules (apt, user, template, copy, get_url,
unarchive, pip), the appliance's virtualenv, the installed units checked by `systemd-analyze verify`
inside the root, and a second run that must report changed=0. The root is debootstrapped with the
packages the roles ask for, so their apt tasks install nothing (they may refresh the package index
from the same mirror when it is more than a day old).

What stands in, and why:

- The Consul and Nomad binaries are small stand-in shell scripts, supplied through the roles'
  offline option (`*_install_method: binary`): Consul as a download URL with a sha256 checksum
  (served from 127.0.0.1 by this test), Nomad as a release-style zip on the machine running Ansible.
  The real binaries cannot be fetched here; the install step does not care what the file holds.
  The roles run `consul validate` / `nomad config validate` on each new agent configuration before
  installing it; the stand-ins accept every file except one holding the word STANDIN-REFUSED, so
  the test can show that a refused configuration never replaces the one in place.
- Services cannot start in a chroot (systemd is not PID 1 there), so the inventory sets
  `faas_manage_services: false`: service start/restart/enable tasks, handlers that restart or apply
  kernel settings, and the Nomad job registration are skipped. The test checks they were skipped,
  not failed. Unit files, configs, users and directories are still written and checked.
- The virtualenv is built from a one-line requirements file (click, at the version pinned in
  requirements.txt) installed from a wheelhouse on this machine (`appliance_pip_wheelhouse`, which
  makes pip in the chroot run with `--no-index`; the wheel is fetched with `pip download` once and
  cached beside the Debian root). The role's code path is the same as with the full
  requirements.txt; installing all of it (boto3, moto, ansible...) inside the chroot would only
  add minutes.

The debootstrap root is cached as a tar file under
${XDG_CACHE_HOME:-~/.cache}/faas-appliance/, keyed by suite, mirror and package list, and unpacked
into a fresh directory for every test session, so runs never share state.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import http.server
import json
import os
import pathlib
import re
import shutil
import stat
import subprocess
import sys
import threading
import zipfile

import hcl2
import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
VENV_BIN = pathlib.Path(sys.executable).parent
SUITE_FALLBACK = ("bookworm", "http://deb.debian.org/debian")
# Everything the roles install, so that their apt tasks find the packages present (python3-apt and
# python3-packaging are what Ansible's apt and pip modules need on the target).
DEBOOTSTRAP_PACKAGES = [
    "python3", "python3-venv", "python3-packaging", "python3-apt", "systemd", "ca-certificates", "curl", "unzip",
    "iproute2", "procps", "tzdata", "chrony", "bubblewrap", "nodejs",
]
HOST = "faas-node"
PRIVATE_IP = "10.77.0.5"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(900),  # the first session may have to run debootstrap
    pytest.mark.skipif(os.geteuid() != 0, reason="debootstrap and the chroot connection need root"),
]


def apt_source() -> tuple[str, str]:
    """The suite and Debian mirror this machine's apt uses (only package mirrors are reachable)."""
    codename = ""
    os_release = pathlib.Path("/etc/os-release")
    if os_release.exists():
        m = re.search(r"^VERSION_CODENAME=(\w+)", os_release.read_text(), re.M)
        codename = m.group(1) if m else ""
    sources = sorted(pathlib.Path("/etc/apt").glob("sources.list.d/*.sources"))
    for path in sources:
        for stanza in path.read_text().split("\n\n"):
            fields = dict(
                line.split(":", 1) for line in stanza.splitlines()
                if ":" in line and not line.startswith("#")
            )
            uris = fields.get("URIs", "").split()
            suites = fields.get("Suites", "").split()
            if codename in suites and uris and "debian-security" not in uris[0]:
                return codename, uris[0]
    for path in [pathlib.Path("/etc/apt/sources.list"), *pathlib.Path("/etc/apt").glob("sources.list.d/*.list")]:
        if path.exists():
            for line in path.read_text().splitlines():
                m = re.match(r"^deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+(\S+)\s", line)
                if m and m.group(2) == codename and "debian" in m.group(1):
                    return codename, m.group(1)
    return SUITE_FALLBACK


def run(argv, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, check=True, text=True, capture_output=True, **kw)


def cached_debian_root_tar() -> pathlib.Path:
    """Build the minimal Debian root once and keep it as a tar file; return the tar file."""
    suite, mirror = apt_source()
    key = hashlib.sha256(json.dumps([suite, mirror, DEBOOTSTRAP_PACKAGES]).encode()).hexdigest()[:12]
    cache = pathlib.Path(os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache") / "faas-appliance"
    tar = cache / f"debootstrap-{suite}-{key}.tar"
    if tar.exists():
        return tar
    assert shutil.which("debootstrap"), "debootstrap is missing: run `make system-deps` (installs it with apt)"
    cache.mkdir(parents=True, exist_ok=True)
    build = cache / f"build-{suite}-{key}-{os.getpid()}"
    try:
        subprocess.run(
            ["debootstrap", "--variant=minbase", "--include=" + ",".join(DEBOOTSTRAP_PACKAGES),
             suite, str(build / "root"), mirror],
            check=True, capture_output=True, text=True, timeout=900,
        )
        run(["chroot", str(build / "root"), "apt-get", "clean"])
        run(["tar", "-C", str(build / "root"), "--numeric-owner", "-cf", str(build / "root.tar"), "."])
        os.replace(build / "root.tar", tar)  # atomic: a concurrent or interrupted build never leaves half a cache
        for stale in cache.glob(f"debootstrap-{suite}-*.tar"):
            if stale != tar:
                stale.unlink()  # built for another package list or mirror
    finally:
        shutil.rmtree(build, ignore_errors=True)
    return tar


def wheelhouse_for_click(cache: pathlib.Path) -> tuple[pathlib.Path, str]:
    """A wheelhouse holding click at the version requirements.txt pins, downloaded once."""
    pin = re.search(r"^click==(\S+)$", (REPO / "requirements.txt").read_text(), re.M)
    assert pin, "requirements.txt must pin click"
    version = pin.group(1)
    wheels = cache / f"wheelhouse-click-{version}"
    if not any(wheels.glob("click-*.whl")):
        wheels.mkdir(parents=True, exist_ok=True)
        run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
             "--dest", str(wheels), f"click=={version}"])
    return wheels, version


STANDIN = """#!/bin/sh
# Stand-in for the {name} binary in the Ansible chroot test: real binaries are not available here.
# Its validate command (the roles check each configuration with it before installing it) refuses,
# like the real one would a bad file, a configuration that holds the word STANDIN-REFUSED.
case " $* " in
  *" validate "*)
    for last; do :; done
    if grep -q STANDIN-REFUSED "$last"; then echo "{name}: configuration refused" >&2; exit 1; fi ;;
esac
echo "{name} v0.0.0-standin $*"
"""


@pytest.fixture(scope="module")
def standin_binaries(tmp_path_factory):
    """Consul as a URL (served on 127.0.0.1, with checksum), Nomad as a local release zip."""
    d = tmp_path_factory.mktemp("binaries")
    consul = d / "consul"
    consul.write_text(STANDIN.format(name="consul"))
    nomad_zip = d / "nomad_0.0.0_linux_amd64.zip"
    with zipfile.ZipFile(nomad_zip, "w") as z:
        info = zipfile.ZipInfo("nomad")
        info.external_attr = (stat.S_IFREG | 0o755) << 16
        z.writestr(info, STANDIN.format(name="nomad"))

    class QuietHandler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(QuietHandler, directory=str(d))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield {
        "consul_path": consul,
        "consul_url": f"http://127.0.0.1:{server.server_address[1]}/consul",
        "consul_sha256": hashlib.sha256(consul.read_bytes()).hexdigest(),
        "nomad_zip": nomad_zip,
    }
    server.shutdown()
    thread.join()


@pytest.fixture(scope="module")
def debian_root(tmp_path_factory):
    tar = cached_debian_root_tar()
    root = tmp_path_factory.mktemp("chroot") / "root"
    root.mkdir()
    run(["tar", "-C", str(root), "--numeric-owner", "-xf", str(tar)])
    yield root
    # Nothing is mounted inside; removing the tree is the whole cleanup.
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def inventory(tmp_path_factory, debian_root, standin_binaries):
    cache = pathlib.Path(os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache") / "faas-appliance"
    wheels, click_version = wheelhouse_for_click(cache)
    d = tmp_path_factory.mktemp("inventory")
    (d / "requirements.txt").write_text(f"click=={click_version}\n")
    host_vars = {
        "ansible_connection": "community.general.chroot",
        "ansible_host": str(debian_root),
        "ansible_python_interpreter": "/usr/bin/python3",
        "faas_private_ip": PRIVATE_IP,
        "faas_manage_services": False,
        "faas_credentials_dir": str(d / "credentials"),
        "consul_acl_enabled": True,  # renders the optional ACL block too
        "consul_install_method": "binary",
        "consul_binary_src": standin_binaries["consul_url"],
        "consul_binary_checksum": "sha256:" + standin_binaries["consul_sha256"],
        "nomad_install_method": "binary",
        "nomad_binary_src": str(standin_binaries["nomad_zip"]),
        "appliance_requirements_file": str(d / "requirements.txt"),
        "appliance_pip_wheelhouse": str(wheels),
        "appliance_s3_endpoint": "http://127.0.0.1:9000",
    }
    # One host in every tier, so that every role and every template branch runs.
    hosts = {
        "all": {
            "hosts": {HOST: host_vars},
            "children": {g: {"hosts": {HOST: None}} for g in ("servers", "clients", "edge")},
        }
    }
    (d / "hosts.json").write_text(json.dumps(hosts))
    return d


def ansible_env(inventory_dir: pathlib.Path) -> dict[str, str]:
    return dict(
        os.environ,
        PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        ANSIBLE_STDOUT_CALLBACK="ansible.posix.json",
        ANSIBLE_PIPELINING="1",
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_LOCAL_TEMP=str(inventory_dir / "tmp"),
        ANSIBLE_RETRY_FILES_ENABLED="0",
        ANSIBLE_COLLECTIONS_PATH="",  # only the collections that ship in the pinned `ansible` package
    )


def ansible_playbook(inventory_dir: pathlib.Path, playbook: str, *args: str, expect_failure: bool = False) -> dict:
    env = ansible_env(inventory_dir)
    proc = subprocess.run(
        [str(VENV_BIN / "ansible-playbook"), "-i", str(inventory_dir / "hosts.json"), *args,
         str(REPO / "playbooks" / playbook)],
        cwd=REPO, env=env, text=True, capture_output=True, timeout=600,
    )
    try:
        report = json.loads(proc.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"ansible-playbook printed no JSON report (rc={proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    stats = report["stats"].get(HOST, {})
    if expect_failure:
        assert proc.returncode != 0 and stats.get("failures"), "the run was expected to fail"
        return report
    if proc.returncode != 0 or stats.get("failures") or stats.get("unreachable"):
        pytest.fail(f"ansible-playbook failed (rc={proc.returncode}):\n" + "\n".join(failed_tasks(report)) + "\n" + proc.stderr[-4000:])
    return report


def task_results(report: dict):
    for play in report["plays"]:
        for task in play["tasks"]:
            result = task["hosts"].get(HOST)
            if result is not None:
                # The json callback names tasks "<role> : <task name>".
                yield task["task"]["name"].split(" : ", 1)[-1], result


def failed_tasks(report: dict) -> list[str]:
    return [f"{name}: {r.get('msg', '')} {r.get('stderr', '')}" for name, r in task_results(report) if r.get("failed")]


def changed_tasks(report: dict) -> list[str]:
    return [name for name, r in task_results(report) if r.get("changed")]


@pytest.fixture(scope="module")
def first_run(inventory):
    return ansible_playbook(inventory, "site.yml")


def parse_hcl(path: pathlib.Path) -> dict:
    return hcl2.loads(path.read_text(), serialization_options=hcl2.SerializationOptions(
        strip_string_quotes=True, with_comments=False))


def chroot_path(root: pathlib.Path, path: str) -> pathlib.Path:
    return root / path.lstrip("/")


def passwd_entry(root: pathlib.Path, user: str) -> list[str] | None:
    for line in chroot_path(root, "/etc/passwd").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == user:
            return fields
    return None


def owner_mode(root: pathlib.Path, path: str) -> tuple[str, str, str]:
    st = chroot_path(root, path).stat()
    users = {int(f[2]): f[0] for f in (l.split(":") for l in chroot_path(root, "/etc/passwd").read_text().splitlines())}
    groups = {int(f[2]): f[0] for f in (l.split(":") for l in chroot_path(root, "/etc/group").read_text().splitlines())}
    return users[st.st_uid], groups[st.st_gid], oct(stat.S_IMODE(st.st_mode))


def test_first_run_changes_the_host_and_skips_services(first_run):
    changed = changed_tasks(first_run)
    assert "Install the requirements into the virtualenv." in changed
    assert "Write the agent configuration." in changed
    skipped = {name for name, r in task_results(first_run) if r.get("skipped")}
    assert "Make sure the Consul agent is running and starts at boot." in skipped
    assert "Make sure the Nomad agent is running and starts at boot." in skipped
    assert "Make sure the edge router and the control plane are running and start at boot." in skipped
    assert "Register the appliance's jobs with Nomad." in skipped


def test_service_manager_is_not_systemd_in_the_chroot(inventory):
    """Without `faas_manage_services`, the roles decide from the service_mgr fact: in a chroot it is
    not systemd, so the default would skip the service tasks as well."""
    env = dict(ansible_env(inventory), ANSIBLE_STDOUT_CALLBACK="ansible.builtin.default", ANSIBLE_LOAD_CALLBACK_PLUGINS="1")
    proc = subprocess.run(
        [str(VENV_BIN / "ansible"), "-i", str(inventory / "hosts.json"), HOST, "-m", "ansible.builtin.setup",
         "-a", "filter=ansible_service_mgr", "-o"],
        cwd=REPO, env=env, text=True, capture_output=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    m = re.search(r'"ansible_service_mgr":\s*"([^"]+)"', proc.stdout)
    assert m, proc.stdout
    assert m.group(1) != "systemd", m.group(1)


def test_users_and_directories_exist(first_run, debian_root):
    for user, shell in [("faas", "/usr/sbin/nologin"), ("consul", "/usr/sbin/nologin")]:
        entry = passwd_entry(debian_root, user)
        assert entry is not None, f"user {user} missing"
        assert entry[6] == shell
        assert int(entry[2]) < 1000, f"{user} should be a system user"
    assert owner_mode(debian_root, "/var/lib/faas-appliance") == ("faas", "faas", "0o700")  # keys and tokens
    assert owner_mode(debian_root, "/etc/faas-appliance") == ("root", "faas", "0o755")
    assert owner_mode(debian_root, "/opt/consul") == ("consul", "consul", "0o750")
    assert owner_mode(debian_root, "/etc/nomad.d") == ("root", "root", "0o700")
    assert chroot_path(debian_root, "/var/lib/faas-appliance/code-cache").is_dir()
    assert os.readlink(chroot_path(debian_root, "/etc/localtime")) == "/usr/share/zoneinfo/Etc/UTC"


def test_offline_binaries_are_installed(first_run, debian_root, standin_binaries):
    consul = chroot_path(debian_root, "/usr/local/bin/consul")
    assert consul.read_bytes() == standin_binaries["consul_path"].read_bytes()
    assert owner_mode(debian_root, "/usr/local/bin/consul") == ("root", "root", "0o755")
    out = run(["chroot", str(debian_root), "/usr/local/bin/nomad", "version"]).stdout
    assert out.startswith("nomad v0.0.0-standin")


def test_consul_config_is_a_single_server_with_gossip_encryption(first_run, debian_root, inventory):
    assert owner_mode(debian_root, "/etc/consul.d/consul.hcl") == ("root", "consul", "0o640")
    config = parse_hcl(chroot_path(debian_root, "/etc/consul.d/consul.hcl"))
    assert config["server"] is True
    assert config["bootstrap_expect"] == 1
    assert config["bind_addr"] == PRIVATE_IP
    assert config["retry_join"] == [PRIVATE_IP]
    assert len(base64.b64decode(config["encrypt"])) == 32
    # The key is generated once and kept beside the inventory, so the next run writes the same one.
    kept = (inventory / "credentials" / "consul_gossip_key").read_text().split()[0]
    assert base64.b64decode(config["encrypt"]).decode() == kept
    acl = config["acl"][0]
    assert acl["enabled"] is True and acl["default_policy"] == "deny"
    tokens = acl["tokens"][0]
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", tokens["initial_management"])
    assert tokens["agent"] == tokens["initial_management"]


def test_nomad_config_is_server_and_client_with_drivers_and_code_cache(first_run, debian_root):
    config = parse_hcl(chroot_path(debian_root, "/etc/nomad.d/agent.hcl"))
    server = config["server"][0]
    client = config["client"][0]
    assert server["enabled"] is True and server["bootstrap_expect"] == 1
    assert server["server_join"][0]["retry_join"] == [PRIVATE_IP]
    assert client["enabled"] is True and client["node_class"] == "faas-worker"
    volumes = {name: body for v in client["host_volume"] for name, body in v.items()}
    assert volumes["faas-code-cache"]["path"] == "/var/lib/faas-appliance/code-cache"
    plugins = {name: body for p in config["plugin"] for name, body in p.items()}
    assert plugins["raw_exec"]["config"][0]["enabled"] is True
    assert "exec" in plugins
    assert config["consul"][0]["address"] == "127.0.0.1:8500"
    assert not chroot_path(debian_root, "/etc/nomad.d/nomad.hcl").exists()


@pytest.mark.parametrize("unit, exec_start", [
    ("consul", "/usr/local/bin/consul agent -config-dir=/etc/consul.d"),
    ("nomad", "/usr/local/bin/nomad agent -config=/etc/nomad.d"),
    ("faas-control", "/opt/faas-appliance/venv/bin/python -m appliance serve --role control"),
    ("faas-edge", "/opt/faas-appliance/venv/bin/python -m appliance serve --role edge"),
])
def test_systemd_units_are_installed(first_run, debian_root, unit, exec_start):
    path = f"/etc/systemd/system/{unit}.service"
    assert owner_mode(debian_root, path) == ("root", "root", "0o644")
    text = chroot_path(debian_root, path).read_text()
    assert f"ExecStart={exec_start}\n" in text
    assert "WantedBy=multi-user.target" in text
    # systemd's own checker, run inside the Debian root against the unit as installed.
    proc = subprocess.run(["chroot", str(debian_root), "systemd-analyze", "verify", path],
                          text=True, capture_output=True)
    problems = [l for l in (proc.stdout + proc.stderr).splitlines() if unit in l]
    assert proc.returncode == 0 and not problems, proc.stdout + proc.stderr


def test_appliance_virtualenv_imports_its_requirements_and_the_package(first_run, debian_root, inventory):
    expected = (inventory / "requirements.txt").read_text().strip().split("==")[1]
    out = run(["chroot", str(debian_root), "/opt/faas-appliance/venv/bin/python", "-c",
               "import click, appliance.core.errors; print(click.__version__, appliance.core.errors.__file__)"]).stdout.split()
    assert out == [expected, "/opt/faas-appliance/src/appliance/core/errors.py"]
    wrapper = chroot_path(debian_root, "/usr/local/bin/faas").read_text()
    assert 'exec "/opt/faas-appliance/venv/bin/python" -m appliance "$@"' in wrapper
    assert "APPLIANCE_SETTINGS:=/etc/faas-appliance/settings.env" in wrapper
    assert "FAAS_API:=http://127.0.0.1:8081}" in wrapper  # the control plane of this host (a server)


def test_settings_file_selects_cluster_mode(first_run, debian_root):
    path = "/etc/faas-appliance/settings.env"
    assert owner_mode(debian_root, path) == ("root", "faas", "0o640")
    settings = dict(l.split("=", 1) for l in chroot_path(debian_root, path).read_text().splitlines()
                    if l and not l.startswith("#"))
    assert settings["APPLIANCE_MODE"] == "cluster"
    assert settings["APPLIANCE_NOMAD_ADDR"] == "http://127.0.0.1:4646"
    assert settings["APPLIANCE_CONSUL_ADDR"] == "http://127.0.0.1:8500"
    assert settings["APPLIANCE_S3_ENDPOINT"] == "http://127.0.0.1:9000"
    assert settings["APPLIANCE_S3_BUCKET"] == "faas-code"
    assert settings["APPLIANCE_ADVERTISE_ADDR"] == PRIVATE_IP  # how the other hosts reach this edge router


def test_runtimes_and_kernel_settings_are_in_place(first_run, debian_root):
    assert (chroot_path(debian_root, "/opt/faas-appliance/runtimes/README.md").read_bytes()
            == (REPO / "runtimes" / "README.md").read_bytes())
    assert "user.max_user_namespaces = 28633" in chroot_path(debian_root, "/etc/sysctl.d/61-faas-runtimes.conf").read_text()
    assert "net.core.somaxconn = 4096" in chroot_path(debian_root, "/etc/sysctl.d/60-faas-appliance.conf").read_text()


def test_a_bad_setting_stops_the_role_before_it_changes_anything(first_run, inventory, debian_root):
    localtime = chroot_path(debian_root, "/etc/localtime")
    report = ansible_playbook(inventory, "servers.yml", "-e", '{"common_timezone": "Europe/No such zone"}',
                              expect_failure=True)
    failed = failed_tasks(report)
    assert len(failed) == 1 and failed[0].startswith("Check that the time zone is a zoneinfo name.:"), failed
    assert "common_timezone must be a zoneinfo name" in failed[0]
    assert report["stats"][HOST]["changed"] == 0
    assert os.readlink(localtime) == "/usr/share/zoneinfo/Etc/UTC"


@pytest.mark.parametrize("setting, config", [
    ("consul_log_level", "/etc/consul.d/consul.hcl"),
    ("nomad_log_level", "/etc/nomad.d/agent.hcl"),
])
def test_a_configuration_the_agent_refuses_is_not_installed(first_run, inventory, debian_root, setting, config):
    before = chroot_path(debian_root, config).read_bytes()
    report = ansible_playbook(inventory, "servers.yml", "-e", json.dumps({setting: "STANDIN-REFUSED"}),
                              expect_failure=True)
    failed = failed_tasks(report)
    assert len(failed) == 1 and failed[0].startswith("Write the agent configuration.:"), failed
    assert "failed to validate" in failed[0] and "configuration refused" in failed[0], failed
    assert report["stats"][HOST]["changed"] == 0
    assert chroot_path(debian_root, config).read_bytes() == before


def test_second_run_changes_nothing(first_run, inventory):
    second = ansible_playbook(inventory, "site.yml")
    assert second["stats"][HOST]["changed"] == 0, f"not idempotent, changed: {changed_tasks(second)}"
