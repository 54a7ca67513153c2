"""Entering an instance sandbox from a freshly forked process: namespaces, a read-only root, limits.

This module uses only the standard library (``ctypes`` for the few system calls Python 3.11 lacks),
because the runtime zygote (``appliance/zygote.py``) loads it by path, outside the appliance package,
and calls :func:`enter` in each child it forks. The appliance builds the plain-dict *profile* with
:func:`profile`; the zygote never decides what an instance may see.

It does what bubblewrap does, with the same kernel features, but in-process: a cold start forks a
zygote that has already imported the runtime, and bwrap can only wrap a new ``exec``, which would throw
that head start away. (``appliance/backends/zygote_launcher.py`` has the measured comparison.)

:func:`enter` runs in the forked child (the zygote's child, still host root) and returns in a second
child that is pid 1 of a new pid namespace and already confined:

1. ``unshare`` mount, pid, ipc and uts namespaces, and the network namespace when the function's
   ``network`` is ``none`` (a fresh namespace holds only a downed loopback) (:func:`detach`);
2. fork: the first child reports the second's host pid and exits; the zygote, a child subreaper,
   inherits the second and reaps it, so no helper process stays per instance. The zygote keeps one
   such detached child ready per network profile, so a cold start usually begins at step 3;
3. join the instance's cgroups (memory, pids) while still root, so every later process is charged,
   and enter a cgroup namespace rooted there (:func:`confine`);
4. make every mount private, mount a small tmpfs as the new root and put in it
   read-only binds of the host parts a runtime needs (``/usr``, the interpreter's prefix, a few ``/etc``
   files, the runtime directory), the instance's own code read-only at ``/var/task``, a size-capped
   private tmpfs at ``/tmp``, the instance's socket directory at ``/run/faas``, a few device nodes,
   and a ``/proc`` of its own pid namespace; then ``pivot_root`` into it and detach the old root, so
   nothing else of the host (``/root``, the appliance's data directory, other functions' code,
   ``/etc/shadow``) has a path any more, and remount the new root read-only;
5. set rlimits (address space, open files, processes, no core dumps), drop to an unprivileged host
   uid of its own (instances never run as root, so RLIMIT_NPROC applies and uid-0 file ownership
   means nothing), set no_new_privs, and finally enter a user namespace mapping uid 1000 inside to that
   host uid, with every capability dropped.

Errors are raised as :class:`SandboxError` with the failing step in the message; the zygote reports
them to the launcher through the instance's ready pipe.
"""

from __future__ import annotations

import ctypes
import os
import platform
import resource
import stat
import struct

CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE, MS_SHARED = 32, 4096, 16384, 1 << 18, 1 << 20
MNT_DETACH = 2
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS = 1, 4, 36, 38
_SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}.get(platform.machine())
_CAP_VERSION_3 = 0x20080522

#: Paths inside the sandbox.
TASK_DIR = "/var/task"
RUNTIME_DIR = "/var/runtime"
SOCKET_DIR = "/run/faas"
INNER_UID = 1000
#: Host uids handed to instances, one per live instance; nothing on the host owns files with them.
UID_BASE, UID_COUNT = 420000, 60000
DEVICES = ("null", "zero", "full", "random", "urandom")
#: /etc entries a runtime needs to resolve names, find libraries and check TLS certificates; nothing else
#: of /etc (no shadow, no ssl/private, no appliance settings) is visible.
ETC_PARTS = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "nsswitch.conf", "hosts", "resolv.conf", "host.conf",
             "gai.conf", "localtime", "ssl/certs", "ssl/openssl.cnf", "ca-certificates", "mime.types")
#: Top-level host entries bound read-only (or recreated as symlinks where the host has symlinks).
ROOT_PARTS = ("usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32")

_libc = ctypes.CDLL(None, use_errno=True)


class SandboxError(RuntimeError):
    pass


def _check(ret: int, what: str) -> int:
    if ret == -1:
        err = ctypes.get_errno()
        raise SandboxError(f"{what}: {os.strerror(err)} (errno {err})")
    return ret


def _b(s: str | None) -> bytes | None:
    return None if s is None else s.encode()


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    _check(_libc.mount(_b(source), _b(target), _b(fstype), ctypes.c_ulong(flags), _b(data)),
           f"mount {source} on {target}")


def umount(target: str) -> None:
    _check(_libc.umount2(_b(target), ctypes.c_int(MNT_DETACH)), f"umount {target}")


def unshare(flags: int) -> None:
    _check(_libc.unshare(ctypes.c_int(flags)), f"unshare(0x{flags:x})")


def prctl(option: int, arg: int) -> None:
    _check(_libc.prctl(ctypes.c_int(option), ctypes.c_ulong(arg), ctypes.c_ulong(0), ctypes.c_ulong(0),
                       ctypes.c_ulong(0)), f"prctl({option})")


def set_child_subreaper() -> None:
    """Orphaned descendants are re-parented to this process (so it can reap them and read their status)."""
    prctl(PR_SET_CHILD_SUBREAPER, 1)


def _pivot_root(new_root: str, put_old: str) -> None:
    if _SYS_PIVOT_ROOT is None:
        raise SandboxError(f"pivot_root: unsupported machine {platform.machine()}")
    _check(_libc.syscall(ctypes.c_long(_SYS_PIVOT_ROOT), _b(new_root), _b(put_old)), "pivot_root")


def _drop_capabilities() -> None:
    header = struct.pack("Ii", _CAP_VERSION_3, 0)
    data = bytes(24)  # two {effective, permitted, inheritable} triples, all zero
    _check(_libc.capset(ctypes.c_char_p(header), ctypes.c_char_p(data)), "capset")


# -- the profile (built by the appliance) --------------------------------------------------------------

def profile(*, root: str, code_dir: str, runtime_dir: str | None, socket_dir: str, uid: int, network: bool,
            extra_ro: list[str] = (), rlimits: dict[str, int] | None = None, cgroup_procs: list[str] = (),
            tmp_mb: int = 64, hostname: str = "faas") -> dict:
    """The plain, JSON-able description of one instance's sandbox that :func:`enter` applies.

    ``root`` is an empty host directory used only as a mount point; ``extra_ro`` are host directories
    bound read-only at their own path (the interpreter's prefix when it lives outside /usr: its shared
    library is found there by an absolute RUNPATH).
    """
    ro, links = [], []
    for part in ROOT_PARTS:
        host = "/" + part
        if os.path.islink(host):
            links.append((os.readlink(host), host))
        elif os.path.isdir(host):
            ro.append((host, host))
    for part in ETC_PARTS:
        host = "/etc/" + part
        if os.path.islink(host):
            links.append((os.readlink(host), host))
        elif os.path.exists(host):
            ro.append((host, host))
    for path in extra_ro:
        if not any(path == d or path.startswith(d + "/") for _, d in ro):
            ro.append((path, path))
    if runtime_dir:
        ro.append((runtime_dir, RUNTIME_DIR))
    ro.append((code_dir, TASK_DIR))
    return {
        "root": root, "ro": ro, "rw": [(socket_dir, SOCKET_DIR)], "links": links, "uid": uid,
        "network": bool(network), "tmp_mb": int(tmp_mb), "hostname": hostname, "cgroup_procs": list(cgroup_procs),
        "rlimits": dict(rlimits or {}), "cwd": TASK_DIR,
        "files": {"/etc/passwd": f"root:x:0:0:root:/root:/usr/sbin/nologin\n"
                                 f"sbx_user:x:{INNER_UID}:{INNER_UID}::/tmp:/usr/sbin/nologin\n"
                                 "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
                  "/etc/group": f"root:x:0:\nsbx_user:x:{INNER_UID}:\nnogroup:x:65534:\n",
                  "/etc/hostname": hostname + "\n"},
    }


# -- entering it (in the forked child) ------------------------------------------------------------------

def detach(network: bool, report_fd: int) -> None:
    """Fork into new mount, pid, ipc, uts (and, without ``network``, net) namespaces.

    Returns only in the grandchild, pid 1 of the new pid namespace, still root and still seeing the
    host's mounts: :func:`confine` finishes the job. The direct child writes ``b"P"`` and the
    grandchild's host pid (4 bytes), or ``b"E"`` and an error message, to ``report_fd`` and exits.
    The caller must be single-threaded and root. Split from :func:`confine` so the zygote can keep a
    detached child ready for the next cold start.
    """
    try:
        flags = CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS
        if not network:
            flags |= CLONE_NEWNET
        unshare(flags)
        pid = os.fork()
    except BaseException as exc:  # noqa: B902 - reported, then this helper process ends
        os.write(report_fd, b"E" + f"{type(exc).__name__}: {exc}".encode(errors="replace")[:4000])
        os._exit(70)
    if pid:
        os.write(report_fd, b"P" + struct.pack("i", pid))
        os._exit(0)
    os.close(report_fd)


def join_cgroups(procs_files) -> None:
    for procs in procs_files:
        with open(procs, "w") as f:
            f.write("0")  # "0" is the writing process itself


def confine(prof: dict) -> None:
    """In a detached process: join the instance's cgroups (unless it sits in them already), then
    build and enter its sandbox."""
    join_cgroups(prof["cgroup_procs"])
    unshare(CLONE_NEWCGROUP)  # after joining, so its own cgroup is the root it sees
    _setup(prof)


def enter(prof: dict, report_fd: int) -> None:
    """:func:`detach` then :func:`confine`: returns only in the confined grandchild."""
    detach(prof["network"], report_fd)
    confine(prof)


def _make_target(path: str, like: str) -> None:
    """Create the mount point ``path`` as a directory or an empty file, matching ``like``."""
    if os.path.isdir(like):
        os.makedirs(path, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if not os.path.exists(path):
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o644))


def _bind(src: str, dst: str, *, readonly: bool) -> None:
    _make_target(dst, src)
    mount(src, dst, None, MS_BIND | MS_REC)
    flags = MS_BIND | MS_REMOUNT | MS_NOSUID | MS_NODEV | (MS_RDONLY if readonly else 0)
    mount(None, dst, None, flags)


def _setup(prof: dict) -> None:
    root = prof["root"]
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "size=4m,mode=0755")
    at = lambda p: root + p  # noqa: E731 - host path of a sandbox path
    for src, dst in prof["ro"]:
        _bind(src, at(dst), readonly=True)
    for src, dst in prof["rw"]:
        _bind(src, at(dst), readonly=False)
    for target, link in prof["links"]:
        os.makedirs(os.path.dirname(at(link)), exist_ok=True)
        os.symlink(target, at(link))
    for path, text in prof["files"].items():
        os.makedirs(os.path.dirname(at(path)), exist_ok=True)
        with open(at(path), "w") as f:
            f.write(text)
    os.makedirs(at("/dev"), exist_ok=True)
    for name in DEVICES:
        if stat.S_ISCHR(os.stat("/dev/" + name).st_mode):
            _make_target(at("/dev/" + name), "/dev/null")
            mount("/dev/" + name, at("/dev/" + name), None, MS_BIND)
    for i, name in enumerate(("stdin", "stdout", "stderr")):
        os.symlink(f"/proc/self/fd/{i}", at("/dev/" + name))
    os.symlink("/proc/self/fd", at("/dev/fd"))
    os.makedirs(at("/tmp"), exist_ok=True)
    mount("tmpfs", at("/tmp"), "tmpfs", MS_NOSUID | MS_NODEV, f"size={prof['tmp_mb']}m,mode=1777")
    os.makedirs(at("/proc"), exist_ok=True)
    mount("proc", at("/proc"), "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    _check(_libc.sethostname(_b(prof["hostname"]), ctypes.c_size_t(len(prof["hostname"]))), "sethostname")
    os.chdir(root)
    _pivot_root(".", ".")           # the old root is stacked on top of the new one at "/"...
    _check(_libc.umount2(b".", ctypes.c_int(MNT_DETACH)), "umount2 old root")  # ...and detached here
    os.chdir("/")
    mount(None, "/", None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)
    _limits(prof["rlimits"])
    uid = int(prof["uid"])
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)     # from root to a plain uid: the kernel clears every capability
    prctl(PR_SET_NO_NEW_PRIVS, 1)
    prctl(PR_SET_DUMPABLE, 1)       # changing uid made /proc/self root-owned; the uid map needs it ours
    unshare(CLONE_NEWUSER)
    for name, text in (("setgroups", "deny"), ("uid_map", f"{INNER_UID} {uid} 1"),
                       ("gid_map", f"{INNER_UID} {uid} 1")):
        with open(f"/proc/self/{name}", "w") as f:
            f.write(text)
    _drop_capabilities()            # the new user namespace granted a full set; it is not needed
    os.chdir(prof["cwd"])


def _limits(limits: dict[str, int]) -> None:
    for name, value in limits.items():
        which = getattr(resource, "RLIMIT_" + name)
        resource.setrlimit(which, (value, value))
