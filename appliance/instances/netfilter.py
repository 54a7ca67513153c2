"""Keeps ``network: default`` instances off the host's own services: a uid-scoped packet filter.

Instances with the default network share the host's network namespace (that is what gives them
outbound access with no per-instance cost), so without a rule they could connect to everything
listening on 127.0.0.1, ::1 or the host's other addresses: the control API, the edge's platform
paths, Consul and Nomad agents, databases. Each sandboxed instance runs as a host uid of its own,
from a block of uids this appliance holds alone (:func:`claim_uid_block`), so one nftables table
in the host namespace can tell their packets from everyone else's (``meta skuid``, the uid owning
the sending socket, which a process cannot choose) and refuse any that is addressed to the host
itself (``fib daddr type local``: every local address, IPv4 and IPv6, whatever interfaces the host
has now or later), except to the edge's public trigger port (a function may call another
function's HTTP trigger as any client would) and to port 53 (a local DNS resolver such as
systemd-resolved's 127.0.0.53; without it a function could not resolve any name).

Why this rather than a network namespace per instance: the rule is installed once when the
appliance starts, so a cold start pays nothing for it (the bench measures both; see the README's
"Instance sandbox"), whereas a namespace with a veth pair, addresses, routes and NAT costs several
milliseconds per instance and a NAT rule anyway. TCP connections are refused with a reset, so a
client fails at once (ECONNREFUSED) rather than after a timeout; anything else with an ICMP
"administratively prohibited" (EPERM for UDP sends).

The table is named for the uid block (``faas_uids_<n>``), installed atomically (a stale table of
the same name, left by an appliance that was killed, is replaced in the same transaction) and
deleted when the appliance stops. Several appliances on one host each hold their own block, so
their rules never meet: each accepts only its own edge port for only its own instances.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("appliance.instances.netfilter")

#: Uids per appliance: as many instances as one appliance may run at once on this host.
UID_BLOCK = 4000
LOCK_DIR = Path("/run/faas-appliance/uid-blocks")
TABLE_PREFIX = "faas_uids_"
DNS_PORT = 53


@dataclass
class UidBlock:
    """A range of host uids this process holds alone while ``fd`` stays open (an flock)."""

    number: int
    uids: range
    fd: int | None

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def claim_uid_block(base: int, count: int, *, block: int = UID_BLOCK, lock_dir: Path = LOCK_DIR) -> UidBlock:
    """The first free block of ``block`` uids in ``[base, base + count)``, held by an flock on
    ``lock_dir/<n>.lock`` (released by the kernel when the process dies, so a crash frees it). When
    every block is held or the lock directory cannot be used, the whole range is returned unheld:
    instances still run, only the packet filter then cannot tell this appliance's from others'."""
    blocks = max(1, count // block)
    try:
        lock_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        for n in range(blocks):
            fd = os.open(lock_dir / f"{n}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            start = base + n * block
            return UidBlock(n, range(start, start + block), fd)
    except OSError as exc:
        log.warning("event=uid_block_unavailable error=%r", str(exc))
    return UidBlock(-1, range(base, base + count), None)


def ruleset(table: str, uids: range, allow_ports: tuple[int, ...]) -> str:
    """The nft script that (re)creates ``table``: packets from sockets of ``uids`` to any local
    address are refused unless to one of ``allow_ports`` (TCP) or to DNS. Pure: a unit test reads it."""
    last = uids.stop - 1
    allowed = ", ".join(str(p) for p in sorted(set(allow_ports)))
    lines = [
        f"table inet {table} {{}}",
        f"delete table inet {table}",
        f"table inet {table} {{",
        "  chain output {",
        "    type filter hook output priority filter; policy accept;",
        # Only packets sent by an instance's socket: replies and the kernel's own packets carry no
        # instance uid and pass untouched.
        f"    meta skuid {uids.start}-{last} jump instance",
        "  }",
        "  chain instance {",
        "    fib daddr type != local accept",
    ]
    if allowed:
        lines.append(f"    tcp dport {{ {allowed} }} accept")
    lines += [
        f"    meta l4proto {{ tcp, udp }} th dport {DNS_PORT} accept",
        "    meta l4proto tcp reject with tcp reset",
        "    reject with icmpx type admin-prohibited",
        "  }",
        "}",
    ]
    return "\n".join(lines) + "\n"


class HostNetFilter:
    """The appliance's own nftables table: installed at start, removed at stop. ``status`` says
    what is in force (shown by ``/v1/health`` and ``faas doctor``)."""

    def __init__(self, block: UidBlock, *, nft: str | None = None):
        self.block = block
        self.table = f"{TABLE_PREFIX}{block.number}"
        self.nft = nft or shutil.which("nft") or ""
        self.installed = False
        self.status = "not installed yet"

    def unavailable(self) -> str | None:
        """Why the filter cannot be installed here, or None."""
        if self.block.fd is None:
            return f"no uid block of its own could be held under {LOCK_DIR}"
        if not self.nft:
            return "nft (the nftables package) is not installed"
        if os.geteuid() != 0:
            return "installing packet filter rules needs root"
        return None

    def install(self, allow_ports: tuple[int, ...]) -> bool:
        reason = self.unavailable()
        if reason is None:
            script = ruleset(self.table, self.block.uids, allow_ports)
            proc = subprocess.run([self.nft, "-f", "-"], input=script, capture_output=True, text=True, timeout=30)
            if proc.returncode == 0:
                self.installed = True
                ports = ", ".join(str(p) for p in allow_ports) or "none"
                self.status = (f"filtered: instances (uids {self.block.uids.start}-{self.block.uids.stop - 1}) cannot "
                               f"connect to this host's addresses except the edge's trigger port ({ports}) and DNS; "
                               f"nftables table inet {self.table}")
                log.info("event=netfilter_installed table=%s uids=%d-%d allow=%s", self.table, self.block.uids.start,
                         self.block.uids.stop - 1, ports)
                return True
            reason = f"nft refused the rules: {proc.stderr.strip()[:300]}"
        self.status = f"unfiltered: instances with network default can reach this host's services ({reason})"
        log.warning("event=netfilter_unavailable reason=%r", reason)
        return False

    def remove(self) -> None:
        if self.installed:
            proc = subprocess.run([self.nft, "delete", "table", "inet", self.table], capture_output=True, text=True,
                                  timeout=30)
            if proc.returncode != 0:
                log.warning("event=netfilter_remove_failed table=%s error=%r", self.table, proc.stderr.strip())
            self.installed = False
        self.block.release()
