"""Entering an instance sandbox from a freshly forked process: namespaces, a read-only root, limits.

This module uses only the standard library (``ctypes`` for the few system calls Python 3.11 lacks),
because the runtime zygote (``appliance/instances/zygote.py``) loads it by path, outside the appliance package,
and calls :func:`enter` in each child it forks. The appliance builds the plain-dict *profile* with
:func:`profile`; the zygote never decides what an instance may see.

It does what bubblewrap does, with the same kernel features, but in-process: a cold start forks a
zygote that has already imported the runtime, and bwrap can only wrap a new ``exec``, which would throw
that head start away. (``appliance/instances/zygote_launcher.py`` has the measured comparison.)

:func:`enter` runs in the forked child (the zygote's child, still host root) and returns in a second
child that is pid 1 of a new pid namespace and already confined:

1. ``unshare`` mount, pid, ipc and uts namespaces, and the network namespace when the function's
   ``network`` is ``none`` (a fresh namespace holds only a loopback, which is brought up) (:func:`detach`);
2. fork: the first child reports the second's host pid and exits; the zygote, a child subreaper,
   inherits the second and reaps it, so no helper process stays per instance;
3. join the instance's cgroups (memory, pids) while still root, so every later process is charged,
   and enter a cgroup namespace rooted there (:func:`join_cgroups`);
4. make every mount private, mount a small tmpfs as the new root and put in it read-only binds of
   the host parts a runtime needs (``/usr``, the interpreter's prefix, a few ``/etc`` files), a
   size-capped private tmpfs at ``/tmp``, a few device nodes, a ``/proc`` of its own pid namespace and
   empty mount points for the instance's own directories; then ``pivot_root`` into it and detach the
   old root, so nothing else of the host (``/root``, the appliance's data directory, other functions'
   code, ``/etc/shadow``) has a path any more, and remount the new root read-only (:func:`prepare`);
5. attach the instance's own directories: the runtime directory and its code read-only at
   ``/var/runtime`` and ``/var/task``, its socket directory at ``/run/faas``. The root has no host path
   left to bind from, so the zygote, still in the host's mount namespace, makes a detached copy of
   each (``open_tree``, :func:`clone_mounts`) and passes it as a file descriptor, which the child
   ``move_mount``\ s into place (Linux 5.2 or later);
6. set rlimits (address space, open files, processes, no core dumps), drop to an unprivileged host
   uid of its own (instances never run as root, so RLIMIT_NPROC applies and uid-0 file ownership
   means nothing), set no_new_privs, and finally enter a user namespace mapping uid 1000 inside to that
   host uid, with every capability dropped (:func:`confine`, which also does step 5);
7. last, install a seccomp filter that refuses the system calls a function never needs and that only
   widen the kernel's attack surface or serve an escape (:func:`install_seccomp`, :data:`SECCOMP_DENY`).

Steps 1-4 do not depend on the instance, and the zygote keeps one child per network profile that has
done them already (a *spare*), so a cold start only pays for steps 5 and 6. Measured in the child
(python3.11 hello, 60 starts, p50): steps 3-4 took 1.7 ms, of which detaching the old root 0.07-1.4 ms
(it waits for an RCU grace period, which varies with the machine's load), the binds 0.5 ms and the
/etc files 0.15 ms; steps 5-6 take about 0.4 ms. Step 7 is one ``prctl`` with a program the zygote built
at load: the kernel checks it, compiles it and precomputes which calls it always allows, about 0.12-0.17 ms
(in a forked child, 30 runs, on the loaded 2-core machine); a call the filter allows then costs about
10 ns more (``getppid`` 127 -> 138 ns). ``bench/seccomp.py`` measures it through the appliance.

Errors are raised as :class:`SandboxError` with the failing step in the message; the zygote reports
them to the launcher through the instance's ready pipe.
"""

from __future__ import annotations

import ctypes
import functools
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
_SYS_OPEN_TREE, _SYS_MOVE_MOUNT = 428, 429   # the same number on every architecture (Linux 5.2)
AT_FDCWD, OPEN_TREE_CLONE, OPEN_TREE_CLOEXEC, MOVE_MOUNT_F_EMPTY_PATH = -100, 1, os.O_CLOEXEC, 4
_CAP_VERSION_3 = 0x20080522

#: Paths inside the sandbox.
TASK_DIR = "/var/task"
RUNTIME_DIR = "/var/runtime"
SOCKET_DIR = "/run/faas"
#: The function's layers, read-only (empty without layers), as on Lambda.
LAYERS_DIR = "/opt"
#: Where an instance's own directories are attached (empty directories in a prepared root).
INSTANCE_MOUNT_POINTS = (RUNTIME_DIR, TASK_DIR, SOCKET_DIR, LAYERS_DIR)
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
#: What each language of the ``provided`` runtime (a package's own ``bootstrap``) needs from the host
#: besides /usr, where the interpreters, the JRE and curl live: each path the host has is bound read-only
#: (a symlink recreated) in every sandbox, so instances of all runtimes share one root. ``command`` is what
#: ``faas doctor`` looks for on the host. A Go binary or a shell script needs nothing more.
LANGUAGES = {
    "sh": {"command": "sh", "parts": ()},
    "go": {"command": "go", "parts": ()},              # to build: the binary itself runs on its own
    "java": {"command": "java", "parts": ("/etc/alternatives/java", "/etc/java-17-openjdk", "/etc/java-21-openjdk",
                                          "/etc/ssl/certs/java")},
    "python": {"command": "python3", "parts": ("/etc/alternatives/python3",)},
}

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


def prctl(option: int, arg: int, arg3: int = 0) -> None:
    _check(_libc.prctl(ctypes.c_int(option), ctypes.c_ulong(arg), ctypes.c_ulong(arg3), ctypes.c_ulong(0),
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

@functools.lru_cache(maxsize=8)
def _host_parts(extra_ro: tuple[str, ...]) -> tuple[tuple, tuple]:
    """(read-only binds, symlinks) of the host parts every runtime needs; the host's layout does not
    change while the appliance runs, so it is looked up once."""
    ro, links = [], []
    for prefix, parts, present in (("/", ROOT_PARTS, os.path.isdir), ("/etc/", ETC_PARTS, os.path.exists)):
        for part in parts:
            host = prefix + part
            if os.path.islink(host):
                links.append((os.readlink(host), host))
            elif present(host):
                ro.append((host, host))
    for lang in LANGUAGES.values():
        for host in lang["parts"]:
            if any(host.startswith(d + "/") for _, d in ro):
                continue
            if os.path.islink(host):
                links.append((os.readlink(host), host))
            elif os.path.exists(host):
                ro.append((host, host))
    for path in extra_ro:
        if not any(path == d or path.startswith(d + "/") for _, d in ro):
            ro.append((path, path))
    return tuple(ro), tuple(links)


def profile(*, root: str, code_dir: str, runtime_dir: str | None, socket_dir: str, uid: int, network: bool,
            extra_ro: list[str] = (), rlimits: dict[str, int] | None = None, cgroup_procs: list[str] = (),
            tmp_mb: int = 64, hostname: str = "faas", layers_dir: str | None = None) -> dict:
    """The plain, JSON-able description of one instance's sandbox that :func:`prepare` and :func:`confine`
    apply.

    ``base`` is what every instance of the same network profile shares (the root's host parts, /etc
    files, /tmp size, host name): a spare child builds it before its instance is known. ``mounts`` are
    the instance's own directories, ``(host path, sandbox path, read-only)``, attached at launch.
    ``root`` is an empty host directory used only as a mount point; ``extra_ro`` are host directories
    bound read-only at their own path (the interpreter's prefix when it lives outside /usr: its shared
    library is found there by an absolute RUNPATH).
    """
    ro, links = _host_parts(tuple(extra_ro))
    mounts = [(runtime_dir, RUNTIME_DIR, True)] if runtime_dir else []
    mounts += [(code_dir, TASK_DIR, True), (socket_dir, SOCKET_DIR, False)]
    if layers_dir:
        mounts.append((layers_dir, LAYERS_DIR, True))
    base = {
        "root": root, "ro": [list(p) for p in ro], "links": [list(p) for p in links], "network": bool(network),
        "tmp_mb": int(tmp_mb), "hostname": hostname,
        "files": {"/etc/passwd": f"root:x:0:0:root:/root:/usr/sbin/nologin\n"
                                 f"sbx_user:x:{INNER_UID}:{INNER_UID}::/tmp:/usr/sbin/nologin\n"
                                 "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
                  "/etc/group": f"root:x:0:\nsbx_user:x:{INNER_UID}:\nnogroup:x:65534:\n",
                  "/etc/hostname": hostname + "\n"},
    }
    return {"base": base, "mounts": mounts, "uid": uid, "network": bool(network),
            "cgroup_procs": list(cgroup_procs), "rlimits": dict(rlimits or {}), "cwd": TASK_DIR}


# -- entering it (in the forked child) ------------------------------------------------------------------

def detach(network: bool, report_fd: int) -> None:
    """Fork into new mount, pid, ipc, uts (and, without ``network``, net) namespaces.

    Returns only in the grandchild, pid 1 of the new pid namespace, still root and still seeing the
    host's mounts: :func:`prepare` and :func:`confine` finish the job. The direct child writes ``b"P"``
    and the grandchild's host pid (4 bytes), or ``b"E"`` and an error message, to ``report_fd`` and exits.
    The caller must be single-threaded and root. Split from the rest so the zygote can keep a
    detached, prepared child ready for the next cold start.
    """
    try:
        flags = CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS
        if not network:
            flags |= CLONE_NEWNET
        unshare(flags)
        if not network:
            _loopback_up()
        pid = os.fork()
    except BaseException as exc:  # noqa: B902 - reported, then this helper process ends
        os.write(report_fd, b"E" + f"{type(exc).__name__}: {exc}".encode(errors="replace")[:4000])
        os._exit(70)
    if pid:
        os.write(report_fd, b"P" + struct.pack("i", pid))
        os._exit(0)
    os.close(report_fd)


def _loopback_up() -> None:
    """Bring up the loopback interface of a fresh network namespace (still root here, so with the
    capability over it), as every Lambda environment has one: an instance without network can still
    talk to itself, a custom runtime's bootstrap to its Runtime API on 127.0.0.1. Nothing else is
    reachable through it. About 20 us, in the spare before its launch."""
    import fcntl
    import socket
    siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        req = struct.pack("16sH22x", b"lo", 0)
        flags = struct.unpack("16sH22x", fcntl.ioctl(s.fileno(), siocgifflags, req))[1]
        fcntl.ioctl(s.fileno(), siocsifflags, struct.pack("16sH22x", b"lo", flags | iff_up))


def join_cgroups(procs_files) -> None:
    """Join the instance's cgroups and enter a cgroup namespace rooted there. Host paths: before
    :func:`prepare`."""
    for procs in procs_files:
        with open(procs, "w") as f:
            f.write("0")  # "0" is the writing process itself
    unshare(CLONE_NEWCGROUP)  # after joining, so its own cgroup is the root it sees


def _mount_api_available() -> bool:
    """Whether this kernel has ``open_tree``/``move_mount`` (Linux 5.2 or later).

    Without them a child cannot attach a host directory once it has pivoted, so the root is
    assembled after the launch arrives, with the instance's directories bound before the pivot
    (the sandbox is the same; a cold start pays the binds and the pivot, about 1.7 ms more).
    ``FAAS_SANDBOX_MOUNT_API=0`` picks that path on any kernel.
    """
    if os.environ.get("FAAS_SANDBOX_MOUNT_API") == "0":
        return False
    fd = _libc.syscall(ctypes.c_long(_SYS_OPEN_TREE), ctypes.c_int(AT_FDCWD), b"/", ctypes.c_uint(OPEN_TREE_CLOEXEC))
    if fd < 0:
        return False
    os.close(fd)
    return True


MOUNT_API = _mount_api_available()


def clone_mounts(mounts) -> list[int]:
    """In the zygote (the host's mount namespace): a detached copy of each of the instance's own
    directories (``open_tree(OPEN_TREE_CLONE)``), as file descriptors to pass to the prepared child,
    which can no longer reach a host path. None without the mount API (see :data:`MOUNT_API`)."""
    if not MOUNT_API:
        return []
    fds = []
    try:
        for src, _, _ in mounts:
            fds.append(_check(_libc.syscall(ctypes.c_long(_SYS_OPEN_TREE), ctypes.c_int(AT_FDCWD), _b(src),
                                            ctypes.c_uint(OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC)),
                              f"open_tree {src}"))
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return fds


def prepare(base: dict, mounts=None) -> None:
    """Build the shared part of the sandbox and move into it: the root, pivoted into, old root detached.

    Runs in a detached child ahead of its instance (:func:`detach`, after :func:`join_cgroups`).
    Everything here is the same for every instance of a profile, and it is the slow part: the binds,
    and detaching the old root, which waits for an RCU grace period (0.05-3 ms measured). Mount points
    for the instance's own directories are left empty for :func:`confine`.
    """
    root = base["root"]
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "size=4m,mode=0755")
    at = lambda p: root + p  # noqa: E731 - host path of a sandbox path
    for src, dst in base["ro"]:
        _bind(src, at(dst), readonly=True)
    for target, link in base["links"]:
        os.makedirs(os.path.dirname(at(link)), exist_ok=True)
        os.symlink(target, at(link))
    for path, text in base["files"].items():
        os.makedirs(os.path.dirname(at(path)), exist_ok=True)
        with open(at(path), "w") as f:
            f.write(text)
    for path in INSTANCE_MOUNT_POINTS:
        os.makedirs(at(path), exist_ok=True)
    for src, dst, readonly in mounts or ():  # only without the mount API: the instance is known already
        _bind(src, at(dst), readonly=readonly)
    os.makedirs(at("/dev"), exist_ok=True)
    for name in DEVICES:
        if stat.S_ISCHR(os.stat("/dev/" + name).st_mode):
            _make_target(at("/dev/" + name), "/dev/null")
            mount("/dev/" + name, at("/dev/" + name), None, MS_BIND)
    for i, name in enumerate(("stdin", "stdout", "stderr")):
        os.symlink(f"/proc/self/fd/{i}", at("/dev/" + name))
    os.symlink("/proc/self/fd", at("/dev/fd"))
    os.makedirs(at("/tmp"), exist_ok=True)
    mount("tmpfs", at("/tmp"), "tmpfs", MS_NOSUID | MS_NODEV, f"size={base['tmp_mb']}m,mode=1777")
    os.makedirs(at("/proc"), exist_ok=True)
    mount("proc", at("/proc"), "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    _check(_libc.sethostname(_b(base["hostname"]), ctypes.c_size_t(len(base["hostname"]))), "sethostname")
    os.chdir(root)
    _pivot_root(".", ".")           # the old root is stacked on top of the new one at "/"...
    _check(_libc.umount2(b".", ctypes.c_int(MNT_DETACH)), "umount2 old root")  # ...and detached here
    os.chdir("/")
    mount(None, "/", None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)


def confine(prof: dict, mount_fds: list[int], *, template: bool = False) -> None:
    """In a prepared child: attach the instance's own directories (``mount_fds`` from
    :func:`clone_mounts`, in ``prof["mounts"]`` order; closed here), set its limits, and drop to its
    unprivileged uid in a user namespace of its own.

    ``template``: a snapshot template keeps the capabilities its user namespace granted (they reach
    only namespaces that user namespace owns, none of the host's) and gets the template filter, so it
    can give each child it forks namespaces of its own (:func:`isolate_child`)."""
    # without the mount API (no descriptors) :func:`prepare` bound them already
    _move_mounts(prof["mounts"], mount_fds)
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
    if not template:
        _drop_capabilities()        # the new user namespace granted a full set; it is not needed
    os.chdir(prof["cwd"])
    if SECCOMP_UNAVAILABLE is None:
        install_seccomp(template=template)  # last: the steps above need mount, unshare and capset


def fork_into_pid_namespace() -> int:
    """``os.fork``, with the child pid 1 of a pid namespace of its own (owned by the template's user
    namespace), so the instance sees neither the template nor its siblings. For a snapshot template.

    ``clone(CLONE_NEWPID | SIGCHLD)`` between Python's own before- and after-fork steps (so its
    at-fork hooks run, ``random`` reseeds itself, and the interpreter's locks are made new in the
    child), because ``os.fork`` takes no flags and ``unshare(CLONE_NEWPID)`` works once per process:
    the kernel refuses a second (``EINVAL``) until the process is back in its own pid namespace. The
    C library's cached thread id stays right: the template is pid 1 of its namespace, and so is the
    child of its own. Measured against an ``unshare`` in a forked child that forks again: one copy of
    the template's page tables fewer, 3-7 ms less per cold start of a 37 MB template."""
    api = ctypes.pythonapi
    api.PyOS_BeforeFork()
    pid = _libc.syscall(ctypes.c_long(_SYSCALLS[platform.machine()]["clone"]),
                        ctypes.c_ulong(CLONE_NEWPID | _SIGCHLD), ctypes.c_ulong(0), ctypes.c_ulong(0),
                        ctypes.c_ulong(0), ctypes.c_ulong(0))
    if pid == 0:
        api.PyOS_AfterFork_Child()
        return 0
    err = ctypes.get_errno()
    api.PyOS_AfterFork_Parent()
    if pid < 0:
        raise SandboxError(f"clone(CLONE_NEWPID): {os.strerror(err)} (errno {err})")
    return pid


def isolate_child(tmp_mb: int, network: bool) -> None:
    """In a child forked from a snapshot template, pid 1 of its own pid namespace
    (:func:`fork_into_pid_namespace`): the rest of an instance's isolation, then the instance's own
    confinement.

    New mount, ipc and uts namespaces (and net without ``network``), all owned by the template's user
    namespace; a fresh private /tmp, a /proc of its own pid namespace, an empty /run/faas (the
    template's socket directory is not its business: its listening socket comes as a descriptor);
    then every capability dropped, the OOM score the template gave up restored, and the full instance
    filter stacked on the template's. Runs before any at-fork hook of the function's code."""
    flags = CLONE_NEWNS | CLONE_NEWIPC | CLONE_NEWUTS | (0 if network else CLONE_NEWNET)
    unshare(flags)
    if not network:
        _loopback_up()
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, f"size={int(tmp_mb)}m,mode=1777")
    mount("tmpfs", SOCKET_DIR, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_RDONLY, "size=4k,nr_inodes=2")
    mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    try:
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write("0")            # the template is never the OOM killer's choice; its children are
    except OSError:
        pass
    _drop_capabilities()
    if SECCOMP_UNAVAILABLE is None:
        install_seccomp()


def _move_mounts(mounts, mount_fds: list[int]) -> None:
    """Put each detached copy (from :func:`clone_mounts`) at its sandbox path, then make it read-only
    (where asked), nosuid and nodev; the descriptors are closed here."""
    try:
        for (_, dst, readonly), fd in zip(mounts, mount_fds):
            _check(_libc.syscall(ctypes.c_long(_SYS_MOVE_MOUNT), ctypes.c_int(fd), b"", ctypes.c_int(AT_FDCWD),
                                 _b(dst), ctypes.c_uint(MOVE_MOUNT_F_EMPTY_PATH)), f"move_mount {dst}")
            mount(None, dst, None, MS_BIND | MS_REMOUNT | MS_NOSUID | MS_NODEV | (MS_RDONLY if readonly else 0))
    finally:
        for fd in mount_fds:
            os.close(fd)


def attach(ns_fd: int, mounts, mount_fds: list[int]) -> None:
    """From outside: attach directories into the mount namespace of a running, confined instance.

    Runs in a short-lived, single-threaded helper forked by the zygote (``setns`` into a mount
    namespace refuses a multithreaded caller, and changes the caller's root for good), still host
    root: the instance's mount namespace was created by the zygote's child before it entered its
    user namespace, so it belongs to the host's user namespace and the instance itself, without
    capabilities there, can neither do this nor undo it. Used to give a started Node.js spare its
    function's code at /var/task (``appliance/instances/zygote_launcher.py``). ``mount_fds`` come from
    :func:`clone_mounts` made in the host's namespace; ``ns_fd`` is ``/proc/<pid>/ns/mnt``.
    """
    try:
        _check(_libc.setns(ctypes.c_int(ns_fd), ctypes.c_int(CLONE_NEWNS)), "setns mnt")
    except BaseException:
        for fd in mount_fds:
            os.close(fd)
        raise
    _move_mounts(mounts, mount_fds)


def enter(prof: dict, report_fd: int, mount_fds: list[int]) -> None:
    """All steps in a row (:func:`detach`, :func:`join_cgroups`, :func:`prepare`, :func:`confine`):
    returns only in the confined grandchild."""
    detach(prof["network"], report_fd)
    join_cgroups(prof["cgroup_procs"])
    prepare(prof["base"], None if mount_fds else prof["mounts"])
    confine(prof, mount_fds)


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


def _limits(limits: dict[str, int]) -> None:
    for name, value in limits.items():
        which = getattr(resource, "RLIMIT_" + name)
        resource.setrlimit(which, (value, value))


# -- seccomp ------------------------------------------------------------------------------------------

#: The system calls an instance is refused (``EPERM``), by name. The instance already runs as an
#: unprivileged uid with no capabilities, no_new_privs, and in namespaces of its own, so most of these
#: would fail anyway; the filter is the second wall. It stops them before the kernel parses a single
#: argument, so a bug in that code (the source of most container escapes: user namespaces, io_uring,
#: bpf, keys, perf, userfaultfd as an exploitation aid) cannot be reached from a function at all. The
#: list is a deny-list, so everything else a runtime does (Python, Node.js with V8 and libuv, threads,
#: sockets, fork and exec within the pids limit, signals) keeps working unchanged. It follows the
#: classes Docker's default profile and systemd's ``@mount``, ``@module``, ``@raw-io``, ``@obsolete``,
#: ``@debug``, ``@swap``, ``@reboot`` and ``@cpu-emulation`` groups refuse:
#:
#: * debugging and reading other processes: ``ptrace``, ``process_vm_readv``/``writev``, ``kcmp``,
#:   ``pidfd_getfd`` (steals another process's descriptor), ``perf_event_open``, ``lookup_dcookie``;
#: * kernel code and the kernel's own programs: ``kexec_load``/``kexec_file_load``, ``init_module``,
#:   ``finit_module``, ``delete_module`` (and the obsolete x86 module calls), ``bpf``;
#: * exploitation aids and large attack surfaces no function needs: ``userfaultfd`` (stalls the kernel
#:   mid-copy at will), ``io_uring_setup``/``enter``/``register`` (a second system call interface the
#:   filter cannot see into, and a rich source of kernel bugs; Docker refuses it too. Node.js 20's
#:   libuv uses it only with ``UV_USE_IO_URING=1``, and then falls back to its thread pool when the
#:   setup fails), the key retention service ``keyctl``/``add_key``/``request_key`` (not namespaced);
#: * the filesystem layout and namespaces: ``mount``, ``umount2``, ``pivot_root``, ``chroot``, the
#:   mount API (``open_tree``, ``open_tree_attr``, ``move_mount``, ``fsopen``, ``fsconfig``,
#:   ``fsmount``, ``fspick``, ``mount_setattr``), ``unshare``, ``setns``, and ``clone`` with any
#:   namespace flag (its flags are checked; a plain fork or thread passes). A new user namespace is
#:   the first step of most recent escapes: it hands back a full set of capabilities over new
#:   namespaces and exposes code paths written for root. ``clone3`` gets ``ENOSYS`` instead: its flags
#:   sit in memory the filter cannot read, and glibc (pthread_create, posix_spawn) falls back to
#:   ``clone`` when it is missing;
#: * the machine: ``reboot``, ``swapon``/``swapoff``, ``acct``, ``quotactl``/``quotactl_fd``,
#:   ``syslog`` (the kernel log gives addresses away), ``vhangup``, ``iopl``/``ioperm`` (port I/O),
#:   ``modify_ldt`` (x86 segment tables; a source of kernel bugs, used only by emulators);
#: * file handles: ``open_by_handle_at`` (opens files by inode, around the mount tree: the "shocker"
#:   escape) and ``name_to_handle_at``;
#: * ``uselib`` (an a.out loader from 1990s Linux) and ``personality`` with anything but the default
#:   (``PER_LINUX``) or a query (``0xffffffff``): other personalities turn off address space
#:   randomisation or make data executable for the children.
#:
#: Nothing is killed: a refused call returns an error the runtime can report. Left allowed on purpose:
#: ``seccomp`` and ``prctl`` (a function may only narrow its own filter), ``sethostname`` (its own UTS
#: namespace), ``mknod`` and the clock setters (refused by capability checks with no interesting code
#: behind them), ``listmount``/``statmount`` (read-only, its own mount namespace).
SECCOMP_DENY = (
    "ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_getfd", "perf_event_open", "lookup_dcookie",
    "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module", "create_module",
    "get_kernel_syms", "query_module", "bpf",
    "userfaultfd", "io_uring_setup", "io_uring_enter", "io_uring_register", "keyctl", "add_key", "request_key",
    "mount", "umount2", "pivot_root", "chroot", "open_tree", "open_tree_attr", "move_mount", "fsopen", "fsconfig",
    "fsmount", "fspick", "mount_setattr", "unshare", "setns",
    "reboot", "swapon", "swapoff", "acct", "quotactl", "quotactl_fd", "syslog", "vhangup", "iopl", "ioperm",
    "modify_ldt", "open_by_handle_at", "name_to_handle_at", "uselib",
)

#: System call numbers per architecture (``arch/x86/entry/syscalls/syscall_64.tbl`` and the generic
#: table arm64 uses); calls an architecture does not have are simply absent. Numbers from 424 on are
#: the same everywhere.
_COMMON_NEW = {"pidfd_getfd": 438, "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
               "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433,
               "clone3": 435, "mount_setattr": 442, "quotactl_fd": 443, "open_tree_attr": 467}
_SYSCALLS = {
    "x86_64": {
        "ptrace": 101, "process_vm_readv": 310, "process_vm_writev": 311, "kcmp": 312, "perf_event_open": 298,
        "lookup_dcookie": 212, "kexec_load": 246, "kexec_file_load": 320, "init_module": 175, "finit_module": 313,
        "delete_module": 176, "create_module": 174, "get_kernel_syms": 177, "query_module": 178, "bpf": 321,
        "userfaultfd": 323, "keyctl": 250, "add_key": 248, "request_key": 249, "mount": 165, "umount2": 166,
        "pivot_root": 155, "chroot": 161, "unshare": 272, "setns": 308, "reboot": 169, "swapon": 167,
        "swapoff": 168, "acct": 163, "quotactl": 179, "syslog": 103, "vhangup": 153, "iopl": 172, "ioperm": 173,
        "modify_ldt": 154, "open_by_handle_at": 304, "name_to_handle_at": 303, "uselib": 134,
        "clone": 56, "personality": 135, **_COMMON_NEW},
    "aarch64": {
        "ptrace": 117, "process_vm_readv": 270, "process_vm_writev": 271, "kcmp": 272, "perf_event_open": 241,
        "lookup_dcookie": 18, "kexec_load": 104, "kexec_file_load": 294, "init_module": 105, "finit_module": 273,
        "delete_module": 106, "bpf": 280, "userfaultfd": 282, "keyctl": 219, "add_key": 217, "request_key": 218,
        "mount": 40, "umount2": 39, "pivot_root": 41, "chroot": 51, "unshare": 97, "setns": 268, "reboot": 142,
        "swapon": 224, "swapoff": 225, "acct": 89, "quotactl": 60, "syslog": 116, "vhangup": 58,
        "open_by_handle_at": 265, "name_to_handle_at": 264, "clone": 220, "personality": 92, **_COMMON_NEW},
}
AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
#: ``clone`` flags that make a namespace (``CLONE_NEWTIME`` is not one for ``clone``: its bit is the
#: exit signal there).
CLONE_NAMESPACE_FLAGS = (CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER
                         | CLONE_NEWPID | CLONE_NEWNET)
_X32_SYSCALL_BIT = 0x40000000
PR_GET_SECCOMP, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 21, 22, 2
SECCOMP_RET_ALLOW, SECCOMP_RET_ERRNO = 0x7FFF0000, 0x00050000
_EPERM, _ENOSYS = 1, 38
# classic BPF opcodes
_LD_W_ABS, _JEQ_K, _JGE_K, _JSET_K, _RET_K = 0x20, 0x15, 0x35, 0x45, 0x06
# offsets in struct seccomp_data: int nr; __u32 arch; __u64 instruction_pointer; __u64 args[6]
_NR, _ARCH, _ARG0_LO = 0, 4, 16   # the low half of args[0] on these little-endian machines


class _SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte), ("k", ctypes.c_uint32)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_SockFilter))]


def _seccomp_unavailable() -> str | None:
    """Why instances get no seccomp filter here, or None when they do.

    On an architecture without a table above the filter is left out (and ``/v1/health`` and ``faas
    doctor`` say so) rather than the start refused: the numbers differ per architecture, a guessed table
    would refuse the wrong calls, and the rest of the sandbox does not depend on the filter.
    ``FAAS_SANDBOX_SECCOMP=0`` leaves it out anywhere (to compare, or to rule it out).
    """
    if os.environ.get("FAAS_SANDBOX_SECCOMP") == "0":
        return "turned off (FAAS_SANDBOX_SECCOMP=0)"
    if platform.machine() not in _SYSCALLS:
        return f"no system call table for the {platform.machine()} architecture (only x86_64 and aarch64)"
    if _libc.prctl(ctypes.c_int(PR_GET_SECCOMP), ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0),
                   ctypes.c_ulong(0)) < 0:
        return "this kernel was built without seccomp (CONFIG_SECCOMP)"
    return None


SECCOMP_UNAVAILABLE = _seccomp_unavailable()


#: What a snapshot template's filter lets through that an instance's refuses: the calls its forked
#: children need to enter namespaces of their own (``unshare`` without ``CLONE_NEWUSER`` or
#: ``CLONE_NEWCGROUP``, ``mount`` and ``umount2`` in those namespaces). Every child adds the full
#: instance filter on top before any of its own code runs. See appliance/instances/templates.py for
#: the trade-off.
TEMPLATE_ALLOW = ("mount", "umount2", "unshare")
#: ``unshare`` flags a template may use (for its children): never a new user or cgroup namespace.
TEMPLATE_UNSHARE_DENY = CLONE_NEWUSER | CLONE_NEWCGROUP
AF_NETLINK, NETLINK_NETFILTER = 16, 12
_SIGCHLD = 17
_SOCKET_NR = {"x86_64": 41, "aarch64": 198}


def seccomp_program(machine: str | None = None, *, template: bool = False) -> list[tuple[int, int, int, int]]:
    """The filter as classic BPF instructions ``(code, jt, jf, k)`` for ``machine`` (this one).

    ``template``: the filter of a snapshot template (:data:`TEMPLATE_ALLOW`, and ``clone`` with
    ``CLONE_NEWPID``), which also refuses
    netfilter netlink sockets (``socket(AF_NETLINK, *, NETLINK_NETFILTER)``), the usual way to reach
    kernel bugs from capabilities held inside a user namespace.

    1. a call made through another ABI than the native one (the i386 ``int 0x80`` entry or x32 on
       x86_64, AArch32 on arm64) gets ``ENOSYS``, as on a kernel built without it: its numbers are not
       the ones below, and no runtime here uses it;
    2. each name in :data:`SECCOMP_DENY` gets ``EPERM``; ``clone3`` gets ``ENOSYS``; ``clone`` with a
       namespace flag and ``personality`` with anything but ``PER_LINUX`` or a query get ``EPERM``;
    3. everything else is allowed.

    The kernel (5.11+) caches the verdict of calls the filter allows whatever their arguments, so
    those, nearly all a runtime makes, skip the filter entirely after their first use.
    """
    machine = machine or platform.machine()
    table = _SYSCALLS[machine]
    names = [n for n in SECCOMP_DENY if not (template and n in TEMPLATE_ALLOW)]
    deny = sorted({table[n] for n in names if n in table})
    # instructions with symbolic jump targets ("allow", "eperm", "enosys", or an int offset of 0)
    prog: list[tuple[int, object, object, int]] = [
        (_LD_W_ABS, 0, 0, _ARCH),
        (_JEQ_K, 0, "enosys", AUDIT_ARCH[machine]),
        (_LD_W_ABS, 0, 0, _NR),
    ]
    if machine == "x86_64":
        prog.append((_JGE_K, "enosys", 0, _X32_SYSCALL_BIT))
    prog += [(_JEQ_K, "eperm", 0, nr) for nr in deny]
    prog.append((_JEQ_K, "enosys", 0, table["clone3"]))
    if template:
        prog += [
            (_JEQ_K, 0, "not_unshare", table["unshare"]),
            (_LD_W_ABS, 0, 0, _ARG0_LO),
            (_JSET_K, "eperm", "allow", TEMPLATE_UNSHARE_DENY),
            ("not_unshare", None, None, None),
            (_JEQ_K, 0, "not_socket", _SOCKET_NR[machine]),
            (_LD_W_ABS, 0, 0, _ARG0_LO),
            (_JEQ_K, 0, "allow", AF_NETLINK),
            (_LD_W_ABS, 0, 0, _ARG0_LO + 16),     # args[2], the protocol
            (_JEQ_K, "eperm", "allow", NETLINK_NETFILTER),
            ("not_socket", None, None, None),
            (_LD_W_ABS, 0, 0, _NR),
        ]
    prog += [
        (_JEQ_K, 0, "not_clone", table["clone"]),
        (_LD_W_ABS, 0, 0, _ARG0_LO),
        # a template forks its instances into pid namespaces of their own (fork_into_pid_namespace)
        (_JSET_K, "eperm", "allow", CLONE_NAMESPACE_FLAGS & ~(CLONE_NEWPID if template else 0)),
        ("not_clone", None, None, None),
        (_JEQ_K, 0, "allow", table["personality"]),
        (_LD_W_ABS, 0, 0, _ARG0_LO),
        (_JEQ_K, "allow", 0, 0),                  # PER_LINUX
        (_JEQ_K, "allow", "eperm", 0xFFFFFFFF),   # a query
        ("allow", None, None, None), (_RET_K, 0, 0, SECCOMP_RET_ALLOW),
        ("eperm", None, None, None), (_RET_K, 0, 0, SECCOMP_RET_ERRNO | _EPERM),
        ("enosys", None, None, None), (_RET_K, 0, 0, SECCOMP_RET_ERRNO | _ENOSYS),
    ]
    labels, out = {}, []
    for ins in prog:
        if isinstance(ins[0], str):
            labels[ins[0]] = len(out)
        else:
            out.append(ins)

    def rel(target, at):
        if isinstance(target, int):
            return target
        off = labels[target] - at - 1
        assert 0 <= off <= 255, (target, off)
        return off
    return [(code, rel(jt, i), rel(jf, i), k) for i, (code, jt, jf, k) in enumerate(out)]


def install_seccomp(*, template: bool = False) -> None:
    """Install :func:`seccomp_program` on this process (and every process it starts; filters are
    inherited and cannot be removed). Needs no_new_privs (or ``CAP_SYS_ADMIN``).

    ``prctl(PR_SET_SECCOMP)`` applies to the calling thread only, and that is the whole process here:
    the child was forked from the single-threaded zygote (a fork copies only the calling thread) and
    starts no thread before it serves or execs, so ``SECCOMP_FILTER_FLAG_TSYNC`` is not needed.
    """
    prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(_seccomp_fprog(template)))  # the kernel copies it


@functools.lru_cache(maxsize=2)
def _seccomp_fprog(template: bool = False) -> _SockFprog:
    """:func:`seccomp_program` as a ``struct sock_fprog``, built once in the zygote (at load, see
    below) and inherited by every child, which then only makes the one ``prctl`` (building it in the
    child took about 0.1 ms and dirtied copy-on-write pages)."""
    code = seccomp_program(template=template)
    insns = (_SockFilter * len(code))(*(_SockFilter(c, jt, jf, k) for c, jt, jf, k in code))
    prog = _SockFprog(len(code), insns)
    prog._insns = insns     # keep the array alive with the header pointing at it
    return prog


if SECCOMP_UNAVAILABLE is None:
    _seccomp_fprog()
    _seccomp_fprog(True)
