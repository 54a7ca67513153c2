"""Who is on the other end of a loopback TCP connection: keeps function instances off the control API.

Instances whose function has the default network share the host's network namespace, so they can
reach the appliance's ports on 127.0.0.1; the control API, which can read any function's code and
change any function, must not answer them. Every sandboxed instance runs as a host uid from a range
of its own (``appliance.instances.sandbox.UID_BASE``), and the kernel lists the owner uid of every TCP socket of this network
namespace in /proc/net/tcp{,6}, so the client end of a connection tells whose it is, without any
credential the instance could forge.
"""

from __future__ import annotations

LOOPBACK = ("127.", "::1", "::ffff:127.")


def loopback_peer_uid(remote_addr: str, remote_port: int, local_port: int) -> int | None:
    """The uid owning the client socket of a loopback connection, or None when not found."""
    if not remote_addr or not remote_addr.startswith(LOOPBACK):
        return None
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f, None)
                for line in f:
                    fields = line.split()
                    if len(fields) < 8:
                        continue
                    lport = int(fields[1].rsplit(":", 1)[1], 16)
                    rport = int(fields[2].rsplit(":", 1)[1], 16)
                    if lport == remote_port and rport == local_port:
                        return int(fields[7])
        except OSError:
            continue
    return None


def from_instance(environ: dict, instance_uids: range) -> bool:
    """Whether a WSGI request comes from a sandboxed function instance."""
    try:
        uid = loopback_peer_uid(environ.get("REMOTE_ADDR", ""), int(environ.get("REMOTE_PORT") or 0),
                                int(environ.get("SERVER_PORT") or 0))
    except ValueError:
        return False
    return uid is not None and uid in instance_uids
