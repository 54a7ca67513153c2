"""A ``network: default`` instance cannot connect to the host's own services, except the edge's
public trigger port: the control API, a plain TCP listener on loopback (IPv4 and IPv6) and on the
host's other addresses are all refused from inside a function, while the same function calls
another function's HTTP trigger through the edge and talks to a listener of its own on loopback.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess

import pytest

from tests.waiting import wait_for

PROBE = r'''
import socket, urllib.request, urllib.error

def try_connect(host, port):
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(5)
    try:
        s.connect((host, port))
        return "connected"
    except ConnectionRefusedError:
        return "refused"
    except OSError as exc:
        return f"error: {exc}"
    finally:
        s.close()

def own_listener():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    c = socket.create_connection(srv.getsockname(), timeout=5)
    conn, _ = srv.accept()
    c.sendall(b"own")
    return conn.recv(3).decode()

def handler(event, context):
    out = {label: try_connect(host, port) for label, host, port in event.get("targets", [])}
    out["own listener"] = own_listener()
    if event.get("url"):
        try:
            with urllib.request.urlopen(event["url"], timeout=10) as r:
                out["url"] = [r.status, r.read().decode()[:200]]
        except urllib.error.HTTPError as exc:
            out["url"] = [exc.code, exc.read().decode()[:200]]
        except Exception as exc:
            out["url"] = ["error", str(exc)]
    return out
'''

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the instance sandbox (own uids) needs root")


def host_addresses() -> list[str]:
    """This host's own non-loopback addresses (IPv4 and global IPv6)."""
    out = json.loads(subprocess.run(["ip", "-j", "addr"], capture_output=True, text=True, check=True).stdout)
    addrs = []
    for link in out:
        for a in link.get("addr_info", []):
            if a.get("scope") == "global" and not a["local"].startswith("127."):
                addrs.append(a["local"])
    return addrs


@pytest.fixture(scope="module")
def listeners():
    """A plain TCP listener on every IPv4 address and one on every IPv6 address, opened by the test."""
    v4 = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    v4.bind(("0.0.0.0", 0))
    v4.listen(16)
    v6 = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    v6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    v6.bind(("::", 0))
    v6.listen(16)
    yield v4.getsockname()[1], v6.getsockname()[1]
    v4.close()
    v6.close()


def filtered(appliance) -> str:
    status = appliance.http.get(f"{appliance.api_url}/v1/health", timeout=10).json()["instance_network"]
    assert status.startswith("filtered"), status
    return status


def test_instances_cannot_reach_host_services_but_can_call_a_trigger(appliance, listeners):
    filtered(appliance)
    port4, port6 = listeners
    api_port = int(appliance.api_url.rsplit(":", 1)[1])
    edge_port = int(appliance.edge.rsplit(":", 1)[1])
    # The listeners answer the test itself: a refusal below is the filter's, not a closed port.
    for host, port in (("127.0.0.1", port4), ("::1", port6), ("127.0.0.1", api_port)):
        socket.create_connection((host, port), timeout=5).close()

    target = appliance.deploy(name="net-target", trigger=("GET", "/net-target"))
    probe = appliance.deploy({"index.py": PROBE}, name="net-probe", timeout_s=20)
    targets = [["control api", "127.0.0.1", api_port], ["loopback listener", "127.0.0.1", port4],
               ["other loopback address", "127.0.0.2", port4], ["ipv6 loopback listener", "::1", port6],
               ["edge on ::1 (not listening there)", "::1", edge_port]]
    for addr in host_addresses():
        targets.append([f"host address {addr}", addr, port6 if ":" in addr else port4])
    got = appliance.api.invoke(probe, {"targets": targets, "url": f"{appliance.edge}/net-target"})
    for label, _, _ in targets:
        assert got[label] == "refused", (label, got)
    assert got["url"] == [200, "Hello Serverless"], got
    assert got["own listener"] == "own"     # a function may still talk to itself over loopback
    assert target


def test_instances_cannot_read_the_edges_platform_paths(appliance):
    """The edge's port is reachable (it is the trigger port), but its /_/ platform paths need the
    internal credential, which instances never hold."""
    filtered(appliance)
    probe = appliance.deploy({"index.py": PROBE}, name="net-probe-internal", timeout_s=20)
    got = appliance.api.invoke(probe, {"url": f"{appliance.edge}/_/invocations"})
    assert got["url"][0] in (401, 403, 404), got


def test_the_filter_is_removed_when_the_appliance_stops(make_appliance):
    from .conftest import stop_appliance
    r = make_appliance()
    table = filtered(r).rsplit("table inet ", 1)[1].strip()
    assert subprocess.run(["nft", "list", "table", "inet", table], capture_output=True).returncode == 0
    stop_appliance(r)
    wait_for(lambda: subprocess.run(["nft", "list", "table", "inet", table], capture_output=True).returncode != 0, 10,
             message=f"the table {table} to be removed")


def test_without_nft_the_appliance_says_so_or_refuses_to_start(make_appliance, tmp_path):
    if os.path.exists("/usr/bin/nft") or os.path.exists("/bin/nft"):
        pytest.skip("nft is on the restricted PATH too")
    path = {"PATH": "/usr/bin:/bin"}   # Debian installs nft in /usr/sbin
    r = make_appliance(env={**path, "APPLIANCE_INSTANCE_NET_FILTER": "auto"})
    health = r.http.get(f"{r.api_url}/v1/health", timeout=10).json()
    assert health["instance_network"].startswith("unfiltered") and "nft" in health["instance_network"], health
    assert health["instance_network"] in health["notes"]
    from .test_cli import faas
    doctor = faas(r, "doctor", check=False).stdout
    assert "[warn] instance network policy: unfiltered" in doctor
    from .conftest import start_appliance
    with pytest.raises(AssertionError) as err:
        start_appliance(tmp_path, {**path, "APPLIANCE_INSTANCE_NET_FILTER": "on"})
    assert "APPLIANCE_INSTANCE_NET_FILTER=on but the filter cannot be installed" in str(err.value)
