"""The runtime zygote: a process that has imported the Python bootstrap and forks sandboxed instances.

Run by ``appliance/instances/zygote_launcher.py`` as ``python -u -s -B zygote.py SOCKET BOOTSTRAP``, with
only the standard library: it loads ``sandbox.py`` and the bootstrap by path under private module names,
so nothing of the appliance (Flask, its settings, its open files) is ever in an instance's memory, and a
user file named ``bootstrap.py`` or ``sandbox.py`` cannot be shadowed by ours.

Protocol: one SOCK_SEQPACKET connection per launch. The launcher sends one JSON message
``{"profile": <sandbox.profile()>, "env": {...}, "exec": [argv] | null, "serve": "provided" | null,
"next_cgroup": [...]}`` (``serve``: which preloaded bootstrap runs without ``exec``) with two
file descriptors attached (the instance's ready pipe and its log file), and gets ``{"pid": N}`` (the instance's host pid)
or ``{"error": "..."}``; the connection then stays open and, when the instance ends, carries
``{"exit": returncode}`` (negative: killed by that signal) before it closes. If the zygote dies the
connection closes without that message, which is how the launcher notices. The zygote adds a detached
copy of each of the instance's own directories (``sandbox.clone_mounts``) to the descriptors it hands
the child.

The zygote's stdin is a pipe from the appliance: when it reads EOF (the appliance ended, even by
SIGKILL) it kills the instances it started and exits, so nothing outlives the platform that tracks it.
A zygote that dies on its own leaves its instances running; the appliance still tracks them.

The zygote never runs user code: it is single-threaded, only accepts, forks and reaps. Each child
detaches into new namespaces (``sandbox.detach``), builds its root (``sandbox.prepare``), confines itself
(``sandbox.confine``) and then calls ``bootstrap.serve`` in the preloaded
interpreter (Python) or ``execve``s another runtime (Node.js) inside the sandbox. The zygote is a child
subreaper, so the confined grandchild becomes its child and its exit status comes back here.

Attaching: a message ``{"attach": pid, "mounts": [[host path, sandbox path, read-only]]}`` (no file
descriptors) attaches those directories inside the mount namespace of a running instance this zygote
started (``Zygote.attach``); the reply is ``{"ok": true}`` or ``{"error": "..."}`` and the connection
closes. The launcher uses it to give a started Node.js spare its function's code.

Spares: after each launch the zygote forks one child per network profile that detaches at once, joins
the cgroups named by ``next_cgroup``, builds the shared part of the sandbox and pivots into it
(``sandbox.prepare``), and then blocks on a socket pair; the next launch of that profile is handed to it
(message and descriptors), and it only attaches the instance's own directories and drops its
privileges (``sandbox.confine``). That takes the fork, the namespaces, the cgroup move and the root's
assembly (each of the last two waits for an RCU grace period) off the cold start. A spare is used only
if it was prepared for the launch's cgroups and shared profile; otherwise it is killed and the launch
takes the same steps in a fresh child. A spare exits when the zygote goes.
"""

import gc
import importlib.util
import json
import os
import selectors
import signal
import socket
import struct
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
READY_FD = 3
#: A snapshot template's control socket (launches in, forked pids and exits out).
CONTROL_FD = 4
REPORT_TIMEOUT_S = 10.0


def _load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _fork_reporting(run):
    """Fork a first child that runs ``run(report_w)`` (it never returns) and reports the pid of
    the instance or spare it forks in turn. Returns (pid, None), or (None, the child's message).

    The first child is reaped by the SIGCHLD pass, not here: its exit (unmapping a copy of this
    process) would otherwise delay every reply by about a millisecond."""
    report_r, report_w = os.pipe()
    if os.fork() == 0:
        os.close(report_r)
        run(report_w)
    os.close(report_w)
    try:
        report = _read_report(report_r)
    finally:
        os.close(report_r)
    if report[:1] == b"P" and len(report) == 5:
        return struct.unpack("i", report[1:])[0], None
    return None, report[1:].decode(errors="replace")


def _read_report(fd):
    """The first child's report: b"P" + pid, or b"E" + message."""
    data = b""
    end = time.monotonic() + REPORT_TIMEOUT_S
    while True:
        left = end - time.monotonic()
        if left <= 0:
            return b"Ethe sandboxed child did not report in time"
        r, _, _ = select_one(fd, left)
        if not r:
            continue
        chunk = os.read(fd, 4096)
        if not chunk:
            return data or b"Ethe sandboxed child exited without a report"
        data += chunk


def select_one(fd, timeout):
    """([fd],) when fd is readable within timeout, else ([],): poll(), which has no 1024 limit."""
    import select
    p = select.poll()
    p.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)
    ready = p.poll(None if timeout is None else max(0, int(timeout * 1000)))
    return ([fd] if ready else [], [], [])


class Zygote:
    def __init__(self, sock_path, bootstrap_path):
        self.sandbox = _load("_faas_sandbox", os.path.join(HERE, "sandbox.py"))
        self.bootstrap = _load("_faas_bootstrap", bootstrap_path) if bootstrap_path else None
        if self.bootstrap is not None:
            self.bootstrap.preload()
        # The provided runtime's Runtime API server (runtimes/provided/bootstrap.py) runs in this same
        # preloaded interpreter: a custom runtime's cold start skips an interpreter start and its imports.
        provided = os.path.join(os.path.dirname(os.path.dirname(bootstrap_path or "")), "provided", "bootstrap.py")
        self.provided = _load("_faas_provided", provided) if bootstrap_path and os.path.exists(provided) else None
        # Everything imported so far is shared with every child; keep the collector from walking
        # (and so copying) those pages in each of them.
        gc.collect()
        gc.freeze()
        sys.path[:] = [p for p in sys.path if p not in (HERE, "")]
        self.sandbox.set_child_subreaper()
        try:
            os.unlink(sock_path)
        except FileNotFoundError:
            pass
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.listener.bind(sock_path)
        os.chmod(sock_path, 0o600)
        self.listener.listen(128)
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_w, False)
        os.set_blocking(self.wake_r, False)
        signal.set_wakeup_fd(self.wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        self.waiting = {}  # instance pid -> its launcher connection
        # network (bool) -> (pid, socket, cgroups joined, profile base) of a prepared child for the next launch
        self.spares = {}

    def run(self):
        sel = selectors.DefaultSelector()
        sel.register(self.listener, selectors.EVENT_READ, "accept")
        sel.register(self.wake_r, selectors.EVENT_READ, "reap")
        sel.register(sys.stdin, selectors.EVENT_READ, "parent")
        sys.stdout.write("ready\n")
        sys.stdout.flush()
        while True:
            for key, _ in sel.select():
                if key.data == "parent":  # EOF: the appliance is gone; its instances go with it
                    if not os.read(sys.stdin.fileno(), 512):
                        self.shutdown()
                elif key.data == "accept":
                    conn, _ = self.listener.accept()
                    try:
                        self.launch(conn)
                    except Exception as exc:  # noqa: BLE001 - one bad request must not end the zygote
                        self._send(conn, {"error": f"zygote: {type(exc).__name__}: {exc}"})
                        conn.close()
                else:
                    try:
                        while os.read(self.wake_r, 512):
                            pass
                    except BlockingIOError:
                        pass
                    self.reap()

    def shutdown(self):
        for pid in list(self.waiting) + [spare[0] for spare in self.spares.values()]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        os._exit(0)

    @staticmethod
    def _send(conn, obj):
        try:
            conn.send(json.dumps(obj).encode())
        except OSError:
            pass

    def reap(self):
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            for network, (spare, sock, _, _) in list(self.spares.items()):
                if spare == pid:  # a spare died before it was used
                    del self.spares[network]
                    sock.close()
            conn = self.waiting.pop(pid, None)
            if conn is not None:
                self._send(conn, {"exit": os.waitstatus_to_exitcode(status)})
                conn.close()

    def launch(self, conn):
        conn.settimeout(5.0)
        msg, fds, _, _ = socket.recv_fds(conn, 1 << 20, 4)
        req = json.loads(msg)
        if "attach" in req:
            for fd in fds:
                os.close(fd)
            try:
                self._send(conn, self.attach(int(req["attach"]), req["mounts"]))
            finally:
                conn.close()
            return
        want = 4 if req.get("template") else 3
        if len(fds) != want:
            for fd in fds:
                os.close(fd)
            raise ValueError(f"expected {want} file descriptors (ready pipe, log, environment"
                             f"{', control socket' if want == 4 else ''}), got {len(fds)}")
        prof = req["profile"]
        network = bool(prof["network"])
        try:
            fds += self.sandbox.clone_mounts(prof["mounts"])
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise
        spare = self.spares.pop(network, None)
        child = None
        if spare is not None:
            pid, sock, joined, base = spare
            if joined == prof["cgroup_procs"] and base == prof["base"]:
                try:  # a child prepared ahead of time: hand it the request and its files
                    socket.send_fds(sock, [msg], fds)
                    child = pid
                except OSError:
                    pass  # it died meanwhile; the SIGCHLD pass reaps it
            else:  # prepared for other cgroups (two launches raced) or another root: of no use
                os.kill(pid, signal.SIGKILL)
            sock.close()
        if child is None:
            child, error = _fork_reporting(lambda report_w: self._child(req, fds, report_w))
            if child is None:
                self._send(conn, {"error": error})
                conn.close()
        for fd in fds:
            os.close(fd)
        if child is not None:
            self.waiting[child] = conn
            self._send(conn, {"pid": child})
        # after replying: ready for the next one
        self._make_spare(network, req.get("next_cgroup") or [], prof["base"], msg)
        self.reap()  # a child may already have ended (a zombie not yet reaped)

    def attach(self, pid, mounts):
        """Attach host directories (``[[host path, sandbox path, read-only]]``) inside the mount namespace
        of instance ``pid``, one this zygote started and still waits for: detached copies made here, in
        the host's namespace, and moved into place by a helper child (``sandbox.attach``).
        ``{"ok": true}`` or ``{"error": ...}``."""
        if pid not in self.waiting:
            return {"error": f"no running instance {pid} of this zygote"}
        if not self.sandbox.MOUNT_API:
            return {"error": "attaching needs the mount API (open_tree, move_mount)"}
        ns = os.open(f"/proc/{pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
        try:
            fds = self.sandbox.clone_mounts(mounts)
        except BaseException:
            os.close(ns)
            raise
        report_r, report_w = os.pipe()
        child = os.fork()
        if child == 0:
            code = 0
            try:
                os.close(report_r)
                self.sandbox.attach(ns, mounts, fds)
            except BaseException as exc:  # noqa: B902 - reported, then this helper ends
                os.write(report_w, f"{type(exc).__name__}: {exc}".encode(errors="replace")[:4000])
                code = 70
            os._exit(code)
        os.close(report_w)
        os.close(ns)
        for fd in fds:
            os.close(fd)
        report = b""
        try:
            while select_one(report_r, REPORT_TIMEOUT_S)[0]:
                chunk = os.read(report_r, 4096)
                if not chunk:
                    break
                report += chunk
            else:
                os.kill(child, signal.SIGKILL)
                report = b"the attaching helper did not finish in time"
        finally:
            os.close(report_r)
        _, status = os.waitpid(child, 0)
        if not report and status != 0:
            report = f"the attaching helper ended with status {os.waitstatus_to_exitcode(status)}".encode()
        return {"error": report.decode(errors="replace")} if report else {"ok": True}

    def _make_spare(self, network, cgroup_procs, base, last_msg):
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)

        def run(report_w):
            mine.close()
            self._spare(network, cgroup_procs, base, theirs, report_w, last_msg)

        child, error = _fork_reporting(run)
        theirs.close()
        if child is not None:
            self.spares[network] = (child, mine, list(cgroup_procs), base)
        else:
            mine.close()
            sys.stderr.write(f"zygote: could not prepare a spare child: {error}\n")

    def _close_inherited(self):
        self.listener.close()
        signal.set_wakeup_fd(-1)
        for fd in (self.wake_r, self.wake_w):
            os.close(fd)
        for c in self.waiting.values():
            c.close()
        for _, sock, _, _ in self.spares.values():
            sock.close()

    def _spare(self, network, cgroup_procs, base, sock, report_w, last_msg):
        """A detached child that builds the shared part of the next instance's sandbox while it waits
        (``sandbox.detach``, ``join_cgroups``, ``prepare``), then confines itself for the launch it is
        handed; never returns. Joining a cgroup costs an RCU grace period (see appliance/instances/cgroups.py),
        and so does detaching the old root."""
        try:
            self._close_inherited()
            self.sandbox.detach(network, report_w)
        except BaseException:  # noqa: B902 - nothing to report to: no launch is waiting for this child
            os._exit(70)
        # now pid 1 of a new pid namespace, still root
        failed = None
        try:
            self.sandbox.join_cgroups(cgroup_procs)
            if self.sandbox.MOUNT_API:
                self.sandbox.prepare(base)
        except BaseException as exc:  # noqa: B902 - reported to the launch this child is handed, if any
            failed = exc
        if failed is None:
            self._rehearse(last_msg)
        try:
            msg, fds, _, _ = socket.recv_fds(sock, 1 << 20, 16)  # the launch, or EOF when the zygote goes
        except BaseException:  # noqa: B902
            os._exit(70)
        if not msg or len(fds) < 3:
            os._exit(0)
        sock.close()
        req = json.loads(msg)
        if failed is None and not self.sandbox.MOUNT_API:
            try:  # the root can only be assembled now, with the instance's directories in it
                self.sandbox.prepare(req["profile"]["base"], req["profile"]["mounts"])
            except BaseException as exc:  # noqa: B902
                failed = exc
        self._instance(req, fds, failed)

    def _rehearse(self, last_msg):
        """Copy ahead the pages a start writes (see ``bootstrap.rehearse``): decode a launch message like
        the one to come, and walk the bootstrap's start."""
        try:
            env = json.loads(last_msg)["env"]
            if self.bootstrap is not None:
                self.bootstrap.rehearse(env)
        except Exception:  # noqa: BLE001 - only a head start
            pass

    def _child(self, req, fds, report_w):
        """The path without a spare: the same steps, none of them ahead."""
        try:
            self._close_inherited()
        except BaseException:  # noqa: B902
            os._exit(70)
        self.sandbox.detach(req["profile"]["network"], report_w)
        failed = None
        try:
            self.sandbox.join_cgroups(req["profile"]["cgroup_procs"])
            self.sandbox.prepare(req["profile"]["base"], None if self.sandbox.MOUNT_API else req["profile"]["mounts"])
        except BaseException as exc:  # noqa: B902
            failed = exc
        self._instance(req, fds, failed)

    def _instance(self, req, fds, failed):
        """Confine this prepared process as the request says, then serve or exec; never returns."""
        template = bool(req.get("template"))
        ready_fd, log_fd, env_fd = fds[0], fds[1], fds[2]
        control_fd = fds[3] if template else None
        mount_fds = fds[4:] if template else fds[3:]
        out = ready_fd
        try:
            own_env = _read_env(env_fd)  # the function's own variables: never read by the zygote
            if failed is not None:
                raise failed
            self.sandbox.confine(req["profile"], mount_fds, template=template)
            # -- now confined: pid 1 of a new pid namespace, unprivileged, in the assembled root --
            os.dup2(log_fd, 1)
            os.dup2(log_fd, 2)
            null = os.open("/dev/null", os.O_RDONLY)
            os.dup2(null, 0)
            if ready_fd != READY_FD:
                os.dup2(ready_fd, READY_FD)
            out = READY_FD
            if control_fd is not None:
                if control_fd != CONTROL_FD:
                    os.dup2(control_fd, CONTROL_FD)
                os.closerange(CONTROL_FD + 1, 1 << 16)
            else:
                os.closerange(READY_FD + 1, 1 << 16)
            for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                signal.signal(sig, signal.SIG_DFL)
            os.write(READY_FD, (json.dumps({"sandboxAt": time.monotonic()}) + "\n").encode())
            env = {**req["env"], **own_env, "FAAS_READY_FD": str(READY_FD)}
            if template:
                self._template(env, req["profile"])
            if req.get("exec"):
                argv = req["exec"]
                os.execve(argv[0], argv, env)
            self._serve(env, self.provided if req.get("serve") == "provided" else self.bootstrap)
        except BaseException as exc:  # noqa: B902 - report whatever stopped the start, then go
            try:
                os.write(out, (json.dumps({"error": f"{type(exc).__name__}: {exc}"}) + "\n").encode())
            except OSError:
                pass
            try:  # and into the instance's log: after the ready line nobody reads ``out`` any more
                import traceback
                os.write(2, ("instance start failed: " + "".join(traceback.format_exception(exc))).encode())
            except Exception:  # noqa: BLE001
                pass
        os._exit(70)

    def _template(self, env, prof):
        """Serve as a snapshot template (see appliance/instances/templates.py); never returns. The
        bootstrap initialises the function once, then forks one confined child per launch; the
        sandbox's two steps are handed to it as callables, since it must not import this module."""
        sandbox = self.sandbox
        tmp_mb, network = int(prof["base"]["tmp_mb"]), bool(prof["network"])
        os.environ.clear()
        os.environ.update(env)
        sys.dont_write_bytecode = True
        bootstrap = self.bootstrap
        sys.argv = [bootstrap.__file__]
        for name in ("_faas_sandbox", "_faas_bootstrap", "_faas_provided"):
            sys.modules.pop(name, None)
        code = bootstrap.template(bootstrap.config_from_env(env), CONTROL_FD, fork=sandbox.fork_into_pid_namespace,
                                  isolate=lambda: sandbox.isolate_child(tmp_mb, network))
        os._exit(code)

    def _serve(self, env, bootstrap):
        os.environ.clear()
        os.environ.update(env)
        sys.dont_write_bytecode = True  # the code directory is read-only and byte-compiled at deploy time
        sys.argv = [bootstrap.__file__]
        for name in ("_faas_sandbox", "_faas_bootstrap", "_faas_provided"):
            sys.modules.pop(name, None)
        code = bootstrap.serve(bootstrap.config_from_env(env))
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(code)


def _read_env(fd):
    """The function's variables from the sealed memory file the launcher made (closed here)."""
    try:
        chunks, at = [], 0
        while True:
            chunk = os.pread(fd, 1 << 16, at)  # from the start: the writer's offset is shared
            if not chunk:
                break
            chunks.append(chunk)
            at += len(chunk)
    finally:
        os.close(fd)
    return json.loads(b"".join(chunks) or b"{}")


def main():
    Zygote(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "").run()


if __name__ == "__main__":
    main()
