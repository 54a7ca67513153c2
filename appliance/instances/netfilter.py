"""Keeps ``network: default`` instances off the host's own services: a uid-scoped packet filter.

Instances with the default network share the host's network namespace (that is what gives them
outbound access with no per-instance cost), so without a rule they could connect to everything
listening on 127.0.0.1, ::1 or the host's other addresses: the control API, the edge's platform
paths, Consul and Nomad agents, databases. Each sandboxed instance runs as a host uid of its own,
from a block of uids this appliance holds alone (:func:`claim_uid_block`), so one nftables table
in the host namespace can tell their packets from everyone else's (``meta skuid``: the uid of the
process that made the sending socket, which it cannot choose) and judge those addressed to the
host itself (``fib daddr type local``: every local address, IPv4 and IPv6, whatever interfaces
the host has now or later):

- TCP to the edge's public trigger port passes (a function may call another function's HTTP
  trigger as any client would), and so does DNS (port 53: a local resolver such as
  systemd-resolved's 127.0.0.53; without it a function could not resolve any name).
- Any other TCP connection to the host may start, and conntrack marks it with the instance's uid;
  the answer decides. When the listening socket belongs to that same instance (a function that
  talks to its own helper process or server over loopback, as ordinary programs do) it passes;
  when it belongs to anyone else (a host service, or another instance) its SYN-ACK is rewritten
  into a reset on its way to the instance, which sees ``ECONNREFUSED`` at once, as for a closed
  port, and never exchanges a byte with it. (The listener keeps a half-open entry until its
  SYN-ACK retries end, about a minute; its SYN backlog bounds them and SYN cookies keep it
  answering others when that fills.)
- Anything else to the host (UDP but DNS, ICMP, other protocols) is refused with an ICMP
  "administratively prohibited" (EPERM for a UDP send).

Why this rather than a network namespace per instance: the table is installed once when the
appliance starts, so a cold start pays nothing for it (``python -m bench.netpolicy`` measures both;
see the README's "Instance sandbox"), whereas a namespace with a veth pair, addresses, a route and
NAT costs tens of milliseconds per instance.

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
    """The first free block of ``block`` uids in ``[base, base + count)``, counted from the top, held
    by an flock on ``lock_dir/<n>.lock`` (released by the kernel when the process dies, so a crash frees it). When
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
            # From the top of the range down: an appliance that hands out uids from the bottom without
            # holding a block (an older version) meets a held block last.
            start = base + count - (n + 1) * block
            return UidBlock(n, range(start, start + block), fd)
    except OSError as exc:
        log.warning("event=uid_block_unavailable error=%r", str(exc))
    return UidBlock(-1, range(base, base + count), None)


def ruleset(table: str, uids: range, allow_ports: tuple[int, ...]) -> str:
    """The nft script that (re)creates ``table``. Pure: a unit test reads it.

    For packets sent by a socket of ``uids`` to any local address: TCP to one of ``allow_ports``
    (the edge) and DNS pass; any other TCP connection may start, marked in conntrack with the
    instance's uid, and its answer decides (see :data:`__doc__`); anything else is refused."""
    first, last = uids.start, uids.stop - 1
    allowed = ", ".join(str(p) for p in sorted(set(allow_ports)))
    marks = ", ".join(f"{u} : {u}" for u in uids)
    pairs = ", ".join(f"{u} . {u}" for u in uids)
    lines = [
        f"table inet {table} {{}}",
        f"delete table inet {table}",
        f"table inet {table} {{",
        f"  map mark_of {{ type uid : mark; elements = {{ {marks} }}; }}",
        f"  set own {{ type uid . mark; elements = {{ {pairs} }}; }}",
        "  chain output {",
        "    type filter hook output priority filter; policy accept;",
        # Answers on a connection an instance opened to this host: only its own sockets may answer.
        f"    ct direction reply ct mark {first}-{last} jump answer",
        # Only packets sent by an instance's socket: the kernel's own packets carry no uid.
        f"    meta skuid {first}-{last} jump instance",
        "  }",
        "  chain instance {",
        "    fib daddr type != local accept",
    ]
    if allowed:
        lines.append(f"    tcp dport {{ {allowed} }} accept")
    lines += [
        f"    meta l4proto {{ tcp, udp }} th dport {DNS_PORT} accept",
        "    meta l4proto tcp ct state new ct mark set meta skuid map @mark_of accept",
        "    meta l4proto tcp accept",
        "    reject with icmpx type admin-prohibited",
        "  }",
        "  chain answer {",
        "    meta skuid . ct mark @own accept",
        # Someone else's listener accepted: its SYN-ACK reaches the instance as a reset instead,
        # so the instance's connect fails at once with ECONNREFUSED, as for a closed port.
        "    tcp flags & (syn | ack) == syn | ack tcp flags set rst | ack accept",
        f"    meta skuid 0-{2**32 - 1} drop",
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
