"""Nothing assumes one host: the edge router and two worker "hosts" run in separate network
namespaces made by this test, joined by veth pairs to a bridge in a hub namespace. Addresses are
in the loopback range (127.200.0.0/24) and exist only inside those namespaces; the root namespace
gets no address or route, so no packet can leave the machine. Linux delivers all of 127.0.0.0/8
to a namespace's own ``lo`` and drops loopback addresses seen on other interfaces, so each
namespace keeps only 127.0.0.1 local and sets ``route_localnet``: 127.200.0.x then travels over
the veths like any other address, and a host cannot reach another host's address by accident.

* ``svc``: the Consul and Nomad doubles and moto's S3 (this test's own thread enters it);
* ``edge``: ``python -m appliance up`` in cluster mode, listening on its namespace address;
* ``h1``, ``h2``: the Nomad double's nodes; allocations run there (``ip netns exec <node meta>``),
  bind their node's address and register that address in Consul.

Needs root and ``ip netns``; without them the test fails and says so (it does not skip).
"""
from __future__ import annotations

import ctypes
import json
import os
import shutil
import subprocess
import sys
import uuid

import pytest
import requests
from doubles.consul import ConsulDouble
from doubles.nomad import FakeNode, NomadDouble
from helpers import ROOT, free_port, job_vars, wait_until

CLONE_NEWNET = 0x40000000
ADDR = {"svc": "127.200.0.2", "edge": "127.200.0.3", "h1": "127.200.0.11", "h2": "127.200.0.12"}
WHERE = "import os\ndef handler(event, context):\n    return os.environ.get('FAAS_HOST')\n"


def sh(*cmd):
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode:
        raise RuntimeError(f"{' '.join(cmd)}: {p.stderr.strip()}")
    return p.stdout


class Namespaces:
    def __init__(self):
        tag = uuid.uuid4().hex[:4]
        self.hub = f"faas-hub-{tag}"
        self.ns = {role: f"faas-{role}-{tag}" for role in ADDR}
        self.made: list[str] = []
        try:
            for name in [self.hub, *self.ns.values()]:
                sh("ip", "netns", "add", name)
                self.made.append(name)
                sh("ip", "-n", name, "link", "set", "lo", "up")
            sh("ip", "-n", self.hub, "link", "add", "br0", "type", "bridge")
            sh("ip", "-n", self.hub, "link", "set", "br0", "up")
            for role, name in self.ns.items():
                inner, outer = f"v{role}{tag}", f"b{role}{tag}"
                # Both ends are created directly inside their namespaces: nothing in the root one.
                sh("ip", "link", "add", inner, "netns", name, "type", "veth", "peer", "name", outer, "netns", self.hub)
                # Loopback-range addresses on a veth: only 127.0.0.1 stays on lo, and the kernel
                # routes 127/8 between interfaces (route_localnet) instead of dropping it.
                sh("ip", "-n", name, "route", "del", "local", "127.0.0.0/8", "dev", "lo", "table", "local")
                for dev in ("all", inner):
                    sh("ip", "netns", "exec", name, "sysctl", "-qw", f"net.ipv4.conf.{dev}.route_localnet=1")
                sh("ip", "-n", name, "addr", "add", f"{ADDR[role]}/24", "dev", inner)
                sh("ip", "-n", name, "link", "set", inner, "up")
                sh("ip", "-n", self.hub, "link", "set", outer, "master", "br0")
                sh("ip", "-n", self.hub, "link", "set", outer, "up")
            # The Nomad double checks a port is free by binding it on the node's address, which
            # lives in another namespace: allow that bind in the service namespace.
            sh("ip", "netns", "exec", self.ns["svc"], "sysctl", "-qw", "net.ipv4.ip_nonlocal_bind=1")
        except Exception:
            self.close()
            raise

    def close(self):
        for name in reversed(self.made):
            subprocess.run(["ip", "netns", "del", name], capture_output=True)


class EnterNetns:
    """Move the calling thread (and threads and processes it starts) into a network namespace."""

    def __init__(self, name: str):
        self.target = f"/var/run/netns/{name}"
        self.libc = ctypes.CDLL(None, use_errno=True)

    def __enter__(self):
        self.home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        fd = os.open(self.target, os.O_RDONLY)
        try:
            if self.libc.setns(fd, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), f"setns({self.target})")
        finally:
            os.close(fd)
        return self

    def __exit__(self, *exc):
        self.libc.setns(self.home, CLONE_NEWNET)
        os.close(self.home)


def netns_inode(name: str) -> int:
    return os.stat(f"/var/run/netns/{name}").st_ino


@pytest.fixture
def namespaces():
    if os.geteuid() != 0 or not shutil.which("ip"):
        pytest.fail("this test needs root and iproute2's `ip netns` to build its hosts; run the cluster tests as root")
    try:
        ns = Namespaces()
    except RuntimeError as exc:
        pytest.fail(f"`ip netns` is not permitted here, so the multi-host test cannot run: {exc}")
    yield ns
    ns.close()


def test_edge_and_two_hosts_in_separate_network_namespaces(namespaces, tmp_path):
    ns = namespaces
    with EnterNetns(ns.ns["svc"]):
        consul = ConsulDouble(host=ADDR["svc"], reap_interval=0.1, min_deregister_after=0.5).start()
        nodes = [FakeNode(h, ADDR[h], meta={"netns": ns.ns[h]}) for h in ("h1", "h2")]
        nomad = NomadDouble(host=ADDR["svc"], nodes=nodes, consul=consul, data_dir=str(tmp_path / "nomad"),
                            placement="spread", delay_scale=0.01, consul_sync_interval=0.5).start()
        s3_port = free_port()
        moto = subprocess.Popen(["ip", "netns", "exec", ns.ns["svc"], os.path.join(os.path.dirname(sys.executable),
                                 "moto_server"), "-H", ADDR["svc"], "-p", str(s3_port)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        edge = None
        try:
            s3 = f"http://{ADDR['svc']}:{s3_port}"
            wait_until(lambda: requests.get(s3, timeout=1).status_code < 500, 30, "moto in the service namespace")
            vars_file = tmp_path / "vars.hcl"
            vars_file.write_text(job_vars(consul.url, str(tmp_path / "code") + "/${node.unique.name}", python_count=2)
                                 + f'instance_command = "{shutil.which("ip")}"\n'
                                 + f'instance_args = ["netns", "exec", "${{meta.netns}}", "{sys.executable}", '
                                   '"-m", "appliance", "instance"]\n')
            data = tmp_path / "edge"
            env = {**os.environ, "APPLIANCE_MODE": "cluster", "APPLIANCE_NOMAD_ADDR": nomad.url,
                   "APPLIANCE_CONSUL_ADDR": consul.url, "APPLIANCE_S3_ENDPOINT": s3, "APPLIANCE_S3_BUCKET": "netns",
                   "APPLIANCE_S3_ACCESS_KEY": "testing", "APPLIANCE_S3_SECRET_KEY": "testing",
                   "APPLIANCE_NOMAD_VARS_FILE": str(vars_file), "APPLIANCE_POOL_REFILL_S": "0",
                   "APPLIANCE_QUEUE_TIMEOUT_S": "25"}
            log = open(tmp_path / "edge.log", "wb")
            edge = subprocess.Popen(["ip", "netns", "exec", ns.ns["edge"], sys.executable, "-m", "appliance", "up",
                                     "--host", ADDR["edge"], "--edge-port", "0", "--api-port", "0",
                                     "--data-dir", str(data)], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
            info = wait_until(lambda: (data / "appliance.json").exists() and json.loads((data / "appliance.json")
                              .read_text()), 30, "the edge to listen in its namespace")
            assert info["edge_url"].startswith(f"http://{ADDR['edge']}:")
            wait_until(lambda: len(consul.passing_instances("faas-pool-python3-11")) == 2, 60,
                       "a generic pool instance on each host")
            pool_addrs = sorted(e["Address"] for e in consul.passing_instances("faas-pool-python3-11"))
            assert pool_addrs == [ADDR["h1"], ADDR["h2"]]

            from helpers import package

            from appliance.client import ApplianceClient
            api = ApplianceClient(info["api_url"], token=(data / "admin.token").read_text().strip())
            answers = {}
            for name in ("first", "second", "third"):  # two from the pool (one per host), one dispatched
                api.create_function(name=name)
                api.upload_code(name, package(WHERE))
                api.add_trigger(name, "GET", f"/{name}")
                r = requests.get(f"{info['edge_url']}/{name}", timeout=60)
                assert r.status_code == 200, r.text
                answers[name] = r.text
            assert {answers["first"], answers["second"]} == {ADDR["h1"], ADDR["h2"]}
            assert answers["third"] in (ADDR["h1"], ADDR["h2"])
            for name in answers:
                (entry,) = consul.passing_instances(f"fn-{name}")
                assert entry["Address"] == answers[name]  # registered with its host's address
            # Every instance process really runs in its host's namespace.
            by_addr = {ADDR[h]: netns_inode(ns.ns[h]) for h in ("h1", "h2")}
            procs = [p for p in nomad.processes() if p.poll() is None]
            assert procs
            for p in procs:
                host_ip = open(f"/proc/{p.pid}/environ", "rb").read().split(b"\0")
                ip = next(v.split(b"=", 1)[1].decode() for v in host_ip if v.startswith(b"FAAS_HOST="))
                assert os.stat(f"/proc/{p.pid}/ns/net").st_ino == by_addr[ip]
            # And the edge itself is in its own namespace, not the root one.
            assert os.stat(f"/proc/{edge.pid}/ns/net").st_ino == netns_inode(ns.ns["edge"])
        finally:
            if edge is not None:
                edge.terminate()
                try:
                    edge.wait(20)
                except subprocess.TimeoutExpired:
                    edge.kill()
            nomad.close()
            consul.close()
            moto.terminate()
            moto.wait(10)
