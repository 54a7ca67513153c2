"""Python 3.11 runtime bootstrap: serves one function over HTTP/1.1 (runtimes/README.md is the contract).

Run as a program (``python3 bootstrap.py``, settings from the environment) or embed it: importing the
module has no side effects and costs only a few stdlib imports, so a zygote imports it once, calls
:func:`preload`, and forks per instance; each child calls ``serve(config_from_env(env))`` and exits with
the status it returns (use ``os._exit``: a timed-out handler thread may still be running).

Why the shape it has:

* A small HTTP/1.1 server on raw sockets, one thread per connection with a keep-alive loop, instead of
  ``http.server``: the platform keeps a few pooled connections per instance, so per-request work is one
  ``recv``, a split of the head, the handler call and one ``sendall``. Measured on the 2-core build machine
  (warm keep-alive loop with ``http.client``, 2000 requests of a hello handler, one connection):
  this server ~13,000 req/s, p50 0.074 ms; ``ThreadingHTTPServer`` (with TCP_NODELAY) ~6,800 req/s,
  p50 0.14 ms. Both figures include the client's own cost.
* The warm invoke path is kept short because on a small machine the instance's CPU per request competes
  with the edge router's: exactly one ``recv`` and one ``sendall`` per request (strace), the event read by
  json's C scanner directly, the result by one C encoder per connection, the reply built as one ASCII str
  with a prebuilt head. CPU the instance spends per warm invoke of a hello handler (``bench/runtime_cpu.py``:
  20,000 requests on one keep-alive connection from a minimal client, rounds alternating with the previous
  version, 2-core machine shared with other work): median 11.6-16.2 us against 17.9-21.0 us over four runs
  of 8-12 rounds (best rounds 10.0-10.8 against 14.2-16.1 us), 41,000-56,000 req/s against 34,000-41,000
  for that client; the Python part alone (no system calls) 7.6 us against 10.5 us. What is left is mostly
  the interpreter (parsing ~2 us, the rest of the path ~5 us) and the kernel's wake-ups; a selector loop
  would add system calls rather than remove them.
* With ``FAAS_MAX_INFLIGHT`` 1 (Lambda's model) the handler runs on the main thread, the one that
  imported the code: the connection's thread hands the invocation over and goes back to reading its
  connection, the main thread runs the handler and sends the reply, so ``asyncio.get_event_loop()``
  (Mangum), ``signal.signal()`` (signal-based timeouts) and thread-local state set at import behave as
  on Lambda. The hand-off is a lock released (no system call of its own, one thread wake-up): 12.6 ->
  18.1 us of CPU per warm invoke (bench/runtime_cpu.py, quiet) when the connection's thread also waited
  for the result, which cost a second wake-up (see :meth:`_Instance._invoke_on_main` for the figures).
  With more than one at once, each runs on its connection's thread, and every such thread gets an
  event loop of its own on first ``asyncio.get_event_loop()`` (see :class:`_ThreadLoopPolicy`).
  A watchdog thread sleeps until the
  earliest deadline among running invocations; on expiry it writes the ``Function.Timeout`` reply on that
  connection itself and the instance exits, since a Python thread cannot be stopped. The watchdog is only
  woken when a new deadline is earlier than the one it sleeps towards, so it costs nothing per request.
* The root logger gets a handler as Lambda's runtime installs one (``[LEVEL]\t<time>Z\t<request id>\t<msg>``,
  or JSON with ``AWS_LAMBDA_LOG_FORMAT=JSON``; level from ``AWS_LAMBDA_LOG_LEVEL``), writing through the
  per-invocation capture. ``logging`` is imported by :func:`preload` (free in a zygote's children,
  about 2 ms of a plain process start).
* Admission, ``/_/drain`` and the deadline bookkeeping share one lock, which makes drain atomic with
  admission: an invoke either wins (it is served) or loses (``503 draining``, safe to retry elsewhere).
* ``sys.stdout``/``sys.stderr`` are replaced by a writer that routes by thread to the running
  invocation's capture, so invocations never see each other's lines even when several run at once.
  Output of threads the handler starts itself, and of C code writing to fd 1, goes to the process's own
  stdout only.
* Thread stacks are 1 MiB instead of the default 8 MiB: the platform bounds the address space
  (RLIMIT_AS), and every keep-alive connection is a thread. 1 MiB still holds a full 1000-frame recursion.
* The user module is imported on the main thread (also after ``/_/specialize``) with the code directory
  first on ``sys.path``; every stdlib module the bootstrap needs later is imported before that, so a user
  file named like a stdlib module cannot break the bootstrap.
* Start-up imports only what is needed: ``_socket`` rather than ``socket.py`` and no ``decimal`` (a
  Decimal result is recognised by its type). Interpreter start, import and :func:`preload` as a program:
  34.4 ms against 37.0 ms (p50 of 40, bare interpreter 9.7 ms), 77 modules against 86.
"""

import _socket
import _thread
import collections
import json
import os
import sys
import threading
import time

RUNTIME = "python3.11"
LOG_CAP = 256 * 1024          # bytes of log lines kept per invocation
LOG_HEAD = LOG_CAP // 2       # of which the first lines; the rest are the last lines
MAX_HEAD = 64 * 1024          # request line + headers
MAX_BODY = 32 * 1024 * 1024   # event size
STACK_SIZE = 1024 * 1024
#: The main thread's idle wait wakes this often to run a Python signal handler whose signal came just before
#: the wait began: such a signal interrupts nothing (CPython runs handlers between bytecodes, and a lock's
#: wait returns early only on a signal that arrives during it), so SIGTERM would otherwise wait forever.
SIGNAL_POLL_S = 0.5
DRAIN_GRACE_S = 2.0           # after draining: wait this long at most for clients to close their connections (a client descheduled under load may still send on one; it gets a 503, not a reset)
HANDLER_RE_SRC = r"([A-Za-z_][A-Za-z0-9_]*(?:/[A-Za-z_][A-Za-z0-9_.-]*)*)\.([A-Za-z_$][A-Za-z0-9_$]*)\Z"
STARTING, POOL, READY, FAILED, DRAINING = "starting", "pool", "ready", "failed", "draining"
_THIS_FILE = os.path.abspath(__file__)
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 409: "Conflict",
            413: "Payload Too Large", 431: "Request Header Fields Too Large", 500: "Internal Server Error",
            501: "Not Implemented", 503: "Service Unavailable", 505: "HTTP Version Not Supported"}
_ENC = json.JSONEncoder(separators=(",", ":"), allow_nan=False)
_SCAN = json.JSONDecoder().scan_once


def preload():
    """Import what the bootstrap may need later, so a zygote pays for it once and user files never shadow it."""
    import importlib, re, traceback, signal, ctypes, select, logging  # noqa: F401,E401
    return None


def rehearse(environ):
    """Walk the code paths of a start once and leave nothing behind.

    A zygote's spare child calls this before its instance is known: the memory pages these paths
    write (reference counts, caches) are then copied from the zygote ahead of time instead of during
    the cold start. Each such copy-on-write fault costs about 3 us on the 2-core VM the figures in
    appliance/instances/zygote_launcher.py come from, and a start took about 400 of them.
    Single-threaded: the spare must stay so until it has entered its user namespace.
    """
    import importlib.util, re  # noqa: E401
    inst = _Instance(config_from_env({k: v for k, v in environ.items() if k != "FAAS_READY_FD"}))
    ours, theirs = _socket.socketpair()
    try:
        re.match(HANDLER_RE_SRC, "index.handler")
        _Capture("").finish()
        theirs.sendall(b"GET /_/ready HTTP/1.1\r\nHost: x\r\n\r\n"
                       b"GET /_/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        theirs.shutdown(_socket.SHUT_WR)
        inst.conns += 1  # as the accept loop counts it
        inst._serve_conn(ours)  # answers both on this thread and closes ``ours``
        while theirs.recv(65536):
            pass
        spec = importlib.util.find_spec("this")  # finder and loader of a module never imported
        if spec is not None and spec.loader is not None:
            spec.loader.get_code(spec.name)
            importlib.util.module_from_spec(spec)
    except Exception:  # noqa: BLE001 - only a head start; the real start reports its own errors
        pass
    finally:
        ours.close()
        theirs.close()


def _limit_malloc_arenas():
    """glibc reserves 64 MiB of address space per thread arena, which an RLIMIT_AS of the function's memory
    cannot afford (measured: 153 MB of address space at start with two threads, 22 MB with this); the
    environment's MALLOC_ARENA_MAX wins when set."""
    if "MALLOC_ARENA_MAX" in os.environ or not sys.platform.startswith("linux"):
        return
    try:
        import ctypes
        ctypes.CDLL(None).mallopt(-8, 1)  # M_ARENA_MAX: the GIL serialises allocation anyway
    except (OSError, AttributeError):
        pass


def config_from_env(environ):
    """Build the settings dict of :func:`serve` from the variables of runtimes/README.md section 1."""
    e = environ
    port = e.get("FAAS_PORT") or e.get("NOMAD_PORT_http") or "8080"
    fd = e.get("FAAS_READY_FD")
    return {
        "handler": e.get("FAAS_HANDLER") or None,
        "code_dir": e.get("FAAS_CODE_DIR") or None,
        "host": e.get("FAAS_HOST") or "127.0.0.1",
        "port": int(port),
        "socket": e.get("FAAS_SOCKET") or None,
        "function_name": e.get("FAAS_FUNCTION_NAME") or "function",
        "function_version": e.get("FAAS_FUNCTION_VERSION") or "1",
        "memory_mb": int(e.get("FAAS_MEMORY_MB") or 128),
        "timeout_s": float(e.get("FAAS_TIMEOUT_S") or 3),
        "max_inflight": int(e.get("FAAS_MAX_INFLIGHT") or 1),
        "instance_id": e.get("FAAS_INSTANCE_ID") or e.get("NOMAD_ALLOC_ID") or None,
        "pool": e.get("FAAS_POOL") in ("1", "true", "yes"),
        "ready_fd": int(fd) if fd else None,
        "region": e.get("FAAS_REGION") or None,
        "account_id": e.get("FAAS_ACCOUNT_ID") or None,
        # The node's Consul agent and this instance's token, read once here: the environment a
        # function brings at /_/specialize may name its own Consul and must not redirect ours.
        "consul_addr": e.get("CONSUL_HTTP_ADDR") or None,
        "consul_token": e.get("CONSUL_HTTP_TOKEN") or "",
    }


def serve(config):
    """Serve until drained (``/_/drain``, SIGTERM, or a timeout); returns the exit status (0)."""
    return _Instance(config).run()


# --- snapshots --------------------------------------------------------------------------------------

#: Descriptors a template may hold when its snapshot is taken: the standard streams, the ready pipe and
#: its control socket. Anything else the function's initialisation left open would be shared by every
#: instance forked from it (one socket, one file offset), so the snapshot is refused with the reason.
_TEMPLATE_FDS = (0, 1, 2, 3, 4)


def _hooks(kind):
    """The callables ``snapshot_restore_py`` (ours in this directory, or a copy the function vendors:
    whichever it imported) registered, as (function, args, kwargs)."""
    mod = sys.modules.get("snapshot_restore_py")
    if mod is None:
        return []
    getter = getattr(mod, "get_before_snapshot" if kind == "before" else "get_after_restore", None)
    return list(getter()) if getter else []


def run_before_snapshot():
    """Lambda's order: the last registered runs first."""
    for fn, args, kwargs in reversed(_hooks("before")):
        fn(*args, **kwargs)


def run_after_restore():
    """Lambda's order: in the order of registration."""
    for fn, args, kwargs in _hooks("after"):
        fn(*args, **kwargs)


def _idle_loop_fds():
    """The descriptors of an idle asyncio event loop made during initialisation (Mangum makes one at
    import: its epoll instance and its self-pipe), when that is all it holds: no other reader or
    writer registered, not running, not closed. ``(loop, {fds})`` or ``(None, set())``."""
    asyncio = sys.modules.get("asyncio")
    if asyncio is None:
        return None, set()
    try:
        loop = asyncio.get_event_loop_policy()._local._loop
    except AttributeError:
        return None, set()
    sel, ssock, csock = (getattr(loop, n, None) for n in ("_selector", "_ssock", "_csock"))
    if loop is None or sel is None or ssock is None or csock is None or loop.is_running() or loop.is_closed():
        return None, set()
    try:
        registered = set(sel.get_map())
        fds = {sel.fileno(), ssock.fileno(), csock.fileno()}
    except (AttributeError, OSError, ValueError):
        return None, set()
    if registered != {ssock.fileno()} or getattr(loop, "_ready", None) or getattr(loop, "_scheduled", None):
        return None, set()
    return loop, fds


def _renew_loop(loop):
    """In a forked instance: a selector and a self-pipe of its own for the loop made during
    initialisation. The old descriptors are closed here only (never unregistered: the epoll instance
    is the template's, and every sibling's)."""
    import selectors
    old, ssock, csock = loop._selector, loop._ssock, loop._csock
    loop._selector = selectors.DefaultSelector()
    ssock.close()
    csock.close()
    inner = getattr(old, "_selector", None)
    if inner is not None:
        inner.close()
    loop._ssock = loop._csock = None
    loop._internal_fds -= 1
    loop._make_self_pipe()


def _udp_socket(fd):
    """(family, type, proto, peer) of a datagram socket that can be made anew in each instance (not
    bound to a port of its own: a sender, like the X-Ray SDK's emitter), else None."""
    try:
        s = _socket.socket(fileno=os.dup(fd))
    except OSError:
        return None
    try:
        if s.type != _socket.SOCK_DGRAM or s.family not in (_socket.AF_INET, _socket.AF_INET6):
            return None
        if s.getsockname()[1] != 0:
            return None
        try:
            peer = s.getpeername()
        except OSError:
            peer = None
        return s.family, s.type, s.proto, peer
    finally:
        s.close()


def _renew_udp(fd, family, kind, proto, peer):
    """In a forked instance: a datagram socket of its own at the same descriptor number."""
    s = _socket.socket(family, kind, proto)
    try:
        if peer is not None:
            s.connect(peer)
        os.dup2(s.fileno(), fd)
    finally:
        s.close()


def _fixup_fds(fix, args):
    """The descriptors a fix-up works on, which a forked instance keeps until it has run."""
    if fix is _renew_udp:
        return {args[0]}
    loop = args[0]
    return {loop._selector.fileno(), loop._ssock.fileno(), loop._csock.fileno()}


def snapshot_refusal(allowed_fds=_TEMPLATE_FDS, fixups=None):
    """Why this initialised process must not be forked into instances, or None.

    Threads (a fork copies only the calling one: the others' locks and work would be lost), other
    processes (they would outlive or serve no instance), and descriptors opened during initialisation
    (sockets, pipes and files would be shared by every instance: one connection, one offset). Two
    kinds of descriptor are made anew in each instance instead (appended to ``fixups``): an idle
    asyncio event loop's (Mangum makes one at import) and a datagram socket with no port of its own
    (the X-Ray SDK's emitter)."""
    tasks = os.listdir("/proc/self/task")
    if len(tasks) > 1:
        names = sorted(t.name for t in threading.enumerate() if t is not threading.main_thread())
        return (f"{len(tasks) - 1} thread(s) alive after initialisation"
                + (f" ({', '.join(names[:5])})" if names else "") + "; a fork keeps only one")
    me = str(os.getpid())
    others = [p for p in os.listdir("/proc") if p.isdigit() and p != me]
    if others:
        return f"{len(others)} other process(es) alive after initialisation"
    loop, loop_fds = _idle_loop_fds()
    extra, renew = [], []
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd in allowed_fds or fd in loop_fds:
            continue
        try:
            what = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # the directory listing's own descriptor, closed already
        udp = _udp_socket(fd) if what.startswith("socket:") else None
        if udp is not None:
            renew.append((_renew_udp, (fd, *udp)))
            continue
        extra.append(f"fd {fd} -> {what}")
    if extra:
        return ("descriptors opened during initialisation would be shared by every instance: "
                + ", ".join(extra[:5]) + ("" if len(extra) <= 5 else f" and {len(extra) - 5} more")
                + "; close them in a before-snapshot hook and open them again after restore")
    if fixups is not None:
        if loop is not None:
            fixups.append((_renew_loop, (loop,)))
        fixups.extend(renew)
    return None


def template(config, control_fd, fork, isolate):
    """Initialise the function once, then fork a confined instance per launch (snapshot mode).

    Called by the runtime zygote in a sandboxed process (appliance/instances/templates.py has the
    design): ``fork()`` forks like ``os.fork`` with the child in a pid namespace of its own, and
    ``isolate()`` runs first in each child (before any at-fork hook of the function's code) and
    confines it like an instance.
    Reports ``{"template": true, "initDurationMs": N}`` or ``{"refused": reason}`` on the ready pipe.
    The control socket then carries ``{"fork": {"env": {...}, "instance_id": ...}}`` with three
    descriptors (ready pipe, log, listening socket), answered ``{"pid": N}`` (in the template's pid
    namespace) or ``{"error": ...}``, and ``{"exit": N, "status": S}`` when a child ends.
    """
    import gc
    import signal
    preload()
    _limit_malloc_arenas()
    threading.stack_size(STACK_SIZE)
    config = dict(config, snapshot=True)
    inst = _Instance(config)
    ready_fd = inst.cfg["ready_fd"]
    launching = []
    isolate_error = []

    def after_in_child():  # registered before the function's code runs, so it runs before its hooks
        if launching:
            try:
                isolate()
            except BaseException as exc:  # noqa: B902 - reported by the child
                isolate_error.append(exc)
    os.register_at_fork(after_in_child=after_in_child)

    def report(obj):
        os.write(ready_fd, (json.dumps(obj) + "\n").encode())
        os.close(ready_fd)

    inst._route_streams()
    inst._load()
    if inst.init_error:
        report({"refused": f"initialisation failed: {inst.init_error.get('errorType')}: "
                           f"{inst.init_error.get('errorMessage')}"})
        return 0
    # Walk the runtime's own request path once here (see rehearse): the pages it writes, Python's
    # specialised byte code among them, are then the template's, not copied by every instance.
    rehearse(dict(os.environ))
    fixups = []
    try:
        run_before_snapshot()       # first: closing what must not be shared is what they are for
    except BaseException as exc:  # noqa: B902
        reason = f"a before-snapshot hook failed: {type(exc).__name__}: {exc}"
    else:
        reason = snapshot_refusal(fixups=fixups)
    if reason:
        report({"refused": reason})
        return 0
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    gc.collect()
    gc.freeze()  # the collector must not walk (and so copy) the template's objects in every instance
    ctl = _socket.socket(fileno=control_fd)
    children = set()

    def send(obj):
        try:
            ctl.send(json.dumps(obj).encode())
        except OSError:
            pass

    def reap(*_):
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid in children:  # not a spare that ended before its launch
                children.discard(pid)
                send({"exit": pid, "status": os.waitstatus_to_exitcode(status)})

    signal.signal(signal.SIGCHLD, reap)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    report({"template": True, "initDurationMs": inst.init_ms})
    fd_room = _socket.CMSG_SPACE(8 * 4)
    spare = None  # (pid, our end of its socket pair): a child forked ahead, waiting for its launch

    def fork_child():
        launching.append(True)
        try:
            return fork()
        finally:
            launching.clear()

    while True:
        try:
            msg, anc, _, _ = ctl.recvmsg(1 << 20, fd_room)
        except InterruptedError:
            continue
        fds = []
        for level, kind, data in anc:
            if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
                fds += list(memoryview(data).cast("i")[: len(data) // 4])
        if not msg:
            return 0  # the launcher is gone: so is every instance (they live in this pid namespace)
        # an instance that ends at once is reported only once it is counted (handler after the add)
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
        try:
            doc = json.loads(msg)
            if "spare" in doc:
                if spare is not None:
                    raise ValueError("there is a spare already")
                ours, theirs = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_SEQPACKET)
                pid = fork_child()
                if pid == 0:
                    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})
                    ours.close()
                    ctl.detach()
                    os.close(control_fd)  # the template's: never a child's
                    _spare_child(inst, theirs, isolate_error, fixups)  # never returns
                theirs.close()
                spare = (pid, ours)
                send({"spare": pid})
                signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})
                continue
            req = doc["fork"]
            if len(fds) != 3:
                raise ValueError(f"a fork needs 3 descriptors, got {len(fds)}")
            if spare is not None:
                pid, ours = spare
                spare = None
                import array
                try:
                    ours.sendmsg([msg], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, array.array("i", fds))])
                finally:
                    ours.close()
            else:
                pid = fork_child()
                if pid == 0:
                    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})
                    ctl.detach()  # its descriptor number is about to be the listener's
                    _forked(inst, req, fds, isolate_error, fixups)  # never returns
        except Exception as exc:  # noqa: BLE001 - one bad launch must not end the template
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})
            for fd in fds:
                os.close(fd)
            send({"error": f"{type(exc).__name__}: {exc}"})
            continue
        children.add(pid)
        for fd in fds:
            os.close(fd)
        send({"pid": pid})
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})


def _spare_child(inst, sock, isolate_error, fixups):
    """A child forked from the template ahead of its launch, confined already (``isolate`` ran at the
    fork): it waits for the launch's message and descriptors, then starts like any forked instance.
    Ends when the template does (its socket pair closes)."""
    fd_room = _socket.CMSG_SPACE(8 * 4)
    while True:
        try:
            msg, anc, _, _ = sock.recvmsg(1 << 20, fd_room)
            break
        except InterruptedError:
            continue
        except OSError:
            os._exit(0)
    if not msg:
        os._exit(0)
    fds = []
    for level, kind, data in anc:
        if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
            fds += list(memoryview(data).cast("i")[: len(data) // 4])
    sock.close()
    _forked(inst, json.loads(msg)["fork"], fds, isolate_error, fixups)


def _forked(inst, req, fds, isolate_error, fixups=()):
    """An instance forked from a template: its own descriptors and variables, the after-restore hooks,
    then serve. Never returns."""
    import fcntl
    code = 70
    try:
        # above every number they go to first, since a received descriptor may sit on one of them
        ready_w, log_fd, listen_fd = (fcntl.fcntl(fd, fcntl.F_DUPFD, 64) for fd in fds)
        os.dup2(ready_w, 3)
        os.dup2(listen_fd, 4)  # in place of the template's control socket, not the instance's business
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        keep = {fd for fix, args in fixups for fd in _fixup_fds(fix, args)}
        for name in os.listdir("/proc/self/fd"):
            if int(name) >= 5 and int(name) not in keep:
                try:
                    os.close(int(name))
                except OSError:
                    pass  # the listing's own descriptor
        if isolate_error:
            raise isolate_error[0]
        t0 = time.perf_counter()
        os.write(3, (json.dumps({"sandboxAt": time.monotonic()}) + "\n").encode())
        os.environ.update(req.get("env") or {})
        cfg = inst.cfg
        cfg.update(instance_id=req.get("instance_id") or cfg["instance_id"], ready_fd=3,
                   socket=req.get("socket") or cfg["socket"])
        os.environ["AWS_LAMBDA_LOG_STREAM_NAME"] = _log_stream(cfg)
        inst.ctx_static = _context_static(cfg)
        inst.idle_since = time.monotonic()
        inst.listener = _socket.socket(fileno=4)
        for fix, args in fixups:  # descriptors of the initialisation, made anew for this instance
            fix(*args)
        run_after_restore()
        restore_ms = round((time.perf_counter() - t0) * 1000, 3)
        inst.init_ms = None  # nothing was initialised here; the record shows the restore instead
        code = inst._serve(load=False, ready_extra={"restoreMs": restore_ms})
    except BaseException as exc:  # noqa: B902 - report whatever stopped the start, then go
        try:
            os.write(3, (json.dumps({"error": f"restoring from the snapshot failed: {type(exc).__name__}: {exc}"})
                         + "\n").encode())
        except OSError:
            pass
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def _new_request_id():
    h = os.urandom(16).hex()  # uuid4-shaped, without importing uuid
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{'89ab'[int(h[16], 16) & 3]}{h[17:20]}-{h[20:]}"


def _error(error_type, message, request_id=None, stack=()):
    return {"errorType": error_type, "errorMessage": message, "requestId": request_id, "stackTrace": list(stack)}


def _user_stack(tb):
    """The traceback as Lambda's list of strings, without the bootstrap's and the import machinery's frames."""
    import traceback
    frames = [f for f in traceback.extract_tb(tb)
              if f.filename != _THIS_FILE and not f.filename.startswith("<frozen importlib")]
    return traceback.format_list(frames)


def _json_default(o):
    # Decimal as Lambda's Python runtime encodes it, for DynamoDB items. Recognised by its type rather than
    # by importing decimal (3 ms of start-up for every instance): a handler returning one has imported it.
    t = type(o)
    if t.__name__ == "Decimal" and t.__module__ == "decimal" and hasattr(o, "to_integral_value"):
        return int(o) if o == o.to_integral_value() else float(o)
    raise TypeError(f"Object of type {t.__name__} is not JSON serializable")


_RESULT_ENC = json.JSONEncoder(separators=(",", ":"), allow_nan=False, default=_json_default)
try:
    from _json import make_encoder as _make_encoder
except ImportError:  # not CPython: JSONEncoder.encode does the same, slower
    _make_encoder = None


class _ResultEncoder:
    """``_RESULT_ENC.encode`` without building a C encoder per call (JSONEncoder does, 0.5 us of the 1.6 us
    it takes for a small HTTP-proxy dict). One per connection thread: the encoder's circular-reference
    markers must not be shared by invocations running at once."""

    __slots__ = ("markers", "encoder")

    def __init__(self):
        self.markers = {}
        self.encoder = None if _make_encoder is None else _make_encoder(
            self.markers, _json_default, json.encoder.encode_basestring_ascii, None, ":", ",", False, False, False)

    def encode(self, value):
        if self.encoder is None:
            return _RESULT_ENC.encode(value)
        try:
            return "".join(self.encoder(value, 0))
        except BaseException:
            self.markers.clear()  # an error midway can leave a container's marker behind
            raise


def _response(status, body, extra="", close=False):
    head = f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}\r\nContent-Type: application/json\r\n" \
           f"Content-Length: {len(body)}\r\n{extra}"
    if close:
        head += "Connection: close\r\n"
    return head.encode("latin-1") + b"\r\n" + body


def _json_response(status, obj, extra="", close=False):
    return _response(status, _ENC.encode(obj).encode(), extra, close)


# The invoke reply's head up to the length: the body is ASCII (the encoders escape everything else), so the
# whole reply is built as one str and encoded once.
_OK_HEAD = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
_END_KEEP, _END_CLOSE = "\r\n\r\n", "\r\nConnection: close\r\n\r\n"
_SENT = object()  # an invoke whose reply the main thread has sent already
_PENDING = object()  # an invoke handed to the main thread, which sends its reply (see _invoke_on_main)


def _parse_event(body):
    """The event of an invoke body; ValueError when it is not JSON (an empty body is ``{}``).

    The C scanner straight on the decoded text costs 0.6 us for a typical 80-byte event against 1.7 us
    for ``json.loads`` (encoding detection, a regex for leading and trailing white space); anything it
    does not take whole (white space around the value, a BOM, UTF-16, an error) goes through
    ``json.loads``, so results and error messages are json's own."""
    if not body:
        return {}
    try:
        text = body.decode()
        value, end = _SCAN(text, 0)
        if end == len(text):
            return value
    except (ValueError, StopIteration):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        pass
    return json.loads(body) if body.strip() else {}


def _refuse(sock, status, message):
    """Answer malformed input with ``status`` and close: stop sending, then read what the client still sends
    (for at most 1 s and 1 MiB), so closing with unread data does not reset the connection before the client
    has read the answer."""
    sock.sendall(_json_response(status, {"error": message}, close=True))
    try:
        sock.shutdown(_socket.SHUT_WR)
        sock.settimeout(1.0)
        left = 1 << 20
        while left > 0:
            data = sock.recv(65536)
            if not data:
                break
            left -= len(data)
    except OSError:
        pass


class _Capture:
    """One invocation's log: complete lines, capped at LOG_CAP bytes, echoed to fd 1 with a prefix.

    Past the cap it keeps the first LOG_HEAD bytes and the last LOG_CAP - LOG_HEAD, with a line
    between them that says how much was dropped: the end of a noisy invocation (the error it died
    with) matters as much as its start. A line longer than the whole cap is cut at it."""

    __slots__ = ("prefix", "lines", "partial", "size", "cut", "cut_lines", "tail", "tail_size", "rid")

    def __init__(self, prefix, rid=""):
        self.prefix, self.lines, self.partial, self.size, self.cut = prefix, [], "", 0, 0
        self.rid = rid
        self.cut_lines, self.tail, self.tail_size = 0, collections.deque(), 0

    def write(self, s):
        if "\n" not in s:
            self.partial += s
            if len(self.partial) > LOG_CAP:   # no newline in sight: bounded all the same
                p, self.partial = self.partial, ""
                self._line(p)
            return
        parts = (self.partial + s).split("\n")
        self.partial = parts.pop()
        for line in parts:
            self._line(line)

    def _line(self, line):
        n = (len(line) if line.isascii() else len(line.encode("utf-8", "replace"))) + 1
        if self.size + n <= LOG_HEAD and not self.cut and not self.tail:
            self.size += n
            self.lines.append(line)
            self._echo(line)
            return
        if self.size > LOG_CAP:   # finished: nothing more is kept
            return
        room = LOG_CAP - LOG_HEAD
        if n > room:
            self.cut += n
            self.cut_lines += 1
            return
        tail = self.tail
        tail.append((line, n))
        self.tail_size += n
        while self.tail_size > room:
            _, m = tail.popleft()
            self.tail_size -= m
            self.cut += m
            self.cut_lines += 1

    def _echo(self, line):
        try:
            os.write(1, (self.prefix + line + "\n").encode("utf-8", "replace"))
        except OSError:
            pass

    def log(self, msg):
        msg = str(msg)
        self.write(msg if msg.endswith("\n") else msg + "\n")

    def finish(self):
        """Flush a last unterminated line and return the lines, with a note where some were cut."""
        if self.partial:
            self.partial, p = "", self.partial
            self._line(p)
        if self.cut or self.tail:
            if self.cut:
                note = (f"[faas] log truncated: {self.cut} bytes in {self.cut_lines} lines were not kept between "
                        f"the first {LOG_HEAD} and the last {LOG_CAP - LOG_HEAD} bytes "
                        f"(limit {LOG_CAP} bytes per invocation)")
                self.lines.append(note)
                self._echo(note)
            for line, _ in self.tail:
                self.lines.append(line)
                self._echo(line)
            self.tail.clear()
            self.cut = self.cut_lines = self.tail_size = 0
            self.size = LOG_CAP + 1  # nothing more is kept
        return self.lines


class _StreamRouter:
    """Stands in for sys.stdout / sys.stderr: lines go to the current thread's invocation, if any."""

    def __init__(self, real, routes):
        self._real, self._routes = real, routes

    def write(self, s):
        cap = self._routes.get(threading.get_ident())
        if cap is None:
            return self._real.write(s)
        if not isinstance(s, str):
            raise TypeError(f"write() argument must be str, not {type(s).__name__}")
        cap.write(s)
        return len(s)

    def writelines(self, lines):
        for s in lines:
            self.write(s)

    def flush(self):
        self._real.flush()

    def __getattr__(self, name):  # fileno, isatty, encoding, buffer, ...
        return getattr(self._real, name)


class LambdaContext:
    """The ``context`` argument, with the attributes of AWS Lambda's Python runtime."""

    __slots__ = ("aws_request_id", "function_name", "function_version", "memory_limit_in_mb",
                 "invoked_function_arn", "log_group_name", "log_stream_name", "identity", "client_context",
                 "attempt", "_deadline", "_capture")

    def __init__(self, request_id, deadline, capture, static, attempt=1):
        """``static``: the per-function attributes, built once per load by :func:`_context_static`.
        ``attempt``: 1, or the attempt number of a retried asynchronous event (an extension)."""
        self.aws_request_id = request_id
        self.attempt = attempt
        (self.function_name, self.function_version, self.memory_limit_in_mb, self.invoked_function_arn,
         self.log_group_name, self.log_stream_name) = static
        self.identity = self.client_context = None
        self._deadline, self._capture = deadline, capture

    @property
    def request_id(self):
        return self.aws_request_id

    def get_remaining_time_in_millis(self):
        return max(0, int((self._deadline - time.time()) * 1000))

    def log(self, msg):
        self._capture.log(msg)


def _context_static(cfg):
    name, version = cfg["function_name"], cfg["function_version"]
    return (name, version, int(cfg["memory_mb"]), function_arn(cfg), f"/aws/lambda/{name}", _log_stream(cfg))


DEFAULT_REGION, DEFAULT_ACCOUNT = "us-east-1", "000000000000"


def function_arn(cfg):
    """Lambda's unqualified function ARN (7 fields): a trigger invokes the function, not a version."""
    region = cfg.get("region") or DEFAULT_REGION
    return f"arn:aws:lambda:{region}:{cfg.get('account_id') or DEFAULT_ACCOUNT}:function:{cfg['function_name']}"


def _log_stream(cfg):
    """Lambda's stream name shape, ``YYYY/MM/DD/[version]<id>``, with the instance id as the id."""
    return time.strftime("%Y/%m/%d/", time.gmtime()) + f"[{cfg['function_version']}]{cfg['instance_id']}"


def lambda_environ(cfg, environ):
    """The variables Lambda sets in a function's environment (runtimes/README.md section 1).

    Reserved ones always win (the control plane refuses them in a function's settings); ``AWS_REGION``,
    ``AWS_DEFAULT_REGION`` and the log settings keep a value the function brings."""
    name, region = cfg["function_name"], cfg.get("region") or DEFAULT_REGION
    out = {
        "AWS_LAMBDA_FUNCTION_NAME": name,
        "AWS_LAMBDA_FUNCTION_VERSION": str(cfg["function_version"]),
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(int(cfg["memory_mb"])),
        "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{name}",
        "AWS_LAMBDA_LOG_STREAM_NAME": _log_stream(cfg),
        "AWS_LAMBDA_INITIALIZATION_TYPE": "snap-start" if cfg.get("snapshot") else "on-demand",
        "AWS_EXECUTION_ENV": "AWS_Lambda_" + RUNTIME,
        "LAMBDA_TASK_ROOT": os.path.abspath(cfg["code_dir"]) if cfg.get("code_dir") else "",
        "LAMBDA_RUNTIME_DIR": runtime_dir(),
        "_HANDLER": cfg.get("handler") or "",
        "TZ": ":UTC",
        "AWS_REGION": environ.get("AWS_REGION") or region,
        "AWS_DEFAULT_REGION": environ.get("AWS_DEFAULT_REGION") or environ.get("AWS_REGION") or region,
    }
    return out


# Lambda's levels (AWS_LAMBDA_LOG_LEVEL) and the names its JSON format gives Python's levels.
_LOG_LEVELS = {"TRACE": 5, "DEBUG": 10, "INFO": 20, "WARN": 30, "WARNING": 30, "ERROR": 40, "FATAL": 50,
               "CRITICAL": 50}
_JSON_LEVEL = {5: "TRACE", 10: "DEBUG", 20: "INFO", 30: "WARN", 40: "ERROR", 50: "FATAL"}
_TEXT_FORMAT = "[%(levelname)s]\t%(asctime)s.%(msecs)03dZ\t%(aws_request_id)s\t%(message)s"


def install_logging(inst, environ):
    """Give the root logger the handler Lambda's Python runtime installs, so the documented pattern
    (``logging.getLogger().setLevel(logging.INFO); logger.info(...)``) prints, with the request id.

    Records go to ``sys.stdout`` at emit time, so they land in the running invocation's log (and in
    the process's output with its prefix). Text by default; ``AWS_LAMBDA_LOG_FORMAT=JSON`` writes
    one JSON object per record (Lambda's keys: timestamp, level, message, logger, requestId, and for
    an exception errorType, errorMessage, stackTrace, location, plus any ``extra`` fields).
    ``AWS_LAMBDA_LOG_LEVEL`` sets the root level (JSON without it: INFO, as on Lambda)."""
    import logging
    as_json = (environ.get("AWS_LAMBDA_LOG_FORMAT") or "").upper() == "JSON"
    level = _LOG_LEVELS.get((environ.get("AWS_LAMBDA_LOG_LEVEL") or "").upper())
    if as_json and level is None:
        level = logging.INFO
    routes = inst.routes
    standard = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "aws_request_id"}

    def request_id():
        cap = routes.get(threading.get_ident())
        return cap.rid if cap is not None else inst.last_rid

    class LambdaLogFormatter(logging.Formatter):
        converter = time.gmtime

        def format(self, record):
            record.aws_request_id = request_id()
            if not as_json:
                return super().format(record)
            out = {"timestamp": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + ".%03dZ" % record.msecs,
                   "level": _JSON_LEVEL.get(record.levelno, record.levelname), "message": record.getMessage(),
                   "logger": record.name, "requestId": record.aws_request_id}
            if record.exc_info and record.exc_info[0] is not None:
                import traceback
                etype, evalue, tb = record.exc_info
                out.update(errorType=etype.__name__, errorMessage=str(evalue),
                           stackTrace=traceback.format_tb(tb),
                           location=f"{record.pathname}:{record.funcName}:{record.lineno}")
            for k, v in vars(record).items():
                if k not in standard and k not in out:
                    out[k] = v
            return json.dumps(out, default=str, ensure_ascii=False)

    class LambdaLogHandler(logging.Handler):
        def emit(self, record):
            try:
                text = self.format(record)
                sys.stdout.write(text + "\n")
            except Exception:  # noqa: BLE001 - logging never breaks the handler
                self.handleError(record)

    handler = LambdaLogHandler()
    handler.setFormatter(LambdaLogFormatter(_TEXT_FORMAT, "%Y-%m-%dT%H:%M:%S"))
    root = logging.getLogger()
    root.handlers = [handler]
    if level is not None:
        root.setLevel(level)
    return handler


LAYERS_DIR = "/opt"


def runtime_dir():
    """Where this runtime's files are as the function sees them: /var/runtime in a sandbox (a zygote
    loaded this file by its host path, which the sandbox does not have), else this file's directory."""
    here = os.path.dirname(_THIS_FILE)
    if not os.path.isdir(here) and os.path.isfile("/var/runtime/bootstrap.py"):
        return "/var/runtime"
    return here


def import_path(code_dir, current, pythonpath=""):
    """The function's ``sys.path``, Lambda's order: its code, its layers (``/opt/python/lib/pythonX.Y/
    site-packages``, ``/opt/python``), the function's own ``PYTHONPATH``, the runtime, the standard library.

    Nothing else: no site-packages or dist-packages of the interpreter the instance runs on (the host's
    or the appliance's virtualenv, with Flask, boto3, ...), and no directory of the process that
    started it (a zygote's). Code that imports here imports on Lambda too, given the same packages."""
    ver = "python%d.%d" % sys.version_info[:2]
    opt = os.environ.get("FAAS_LAYERS_DIR") or LAYERS_DIR  # a plain (unsandboxed) instance's layers
    layers = [f"{opt}/python/lib/{ver}/site-packages", f"{opt}/python"]
    own = [p for p in pythonpath.split(os.pathsep) if p]
    stdlib_roots = tuple({os.path.join(sys.base_prefix, "lib"), os.path.join(sys.base_exec_prefix, "lib"),
                          os.path.join(sys.base_prefix, "lib64"), os.path.join(sys.base_exec_prefix, "lib64")})
    stdlib = [p for p in current if p.startswith(stdlib_roots) and "site-packages" not in p
              and "dist-packages" not in p]
    out = []
    for p in [code_dir, *layers, *own, runtime_dir(), *stdlib]:
        if p not in out:
            out.append(p)
    return out


_LOOP_POLICY = None


def thread_event_loops():
    """Make ``asyncio.get_event_loop()`` work on every thread (a new loop for a thread that has none).

    Lambda calls a handler on the main thread, where asyncio makes a loop when none is set; with
    ``FAAS_MAX_INFLIGHT`` above 1 handlers run on connection threads, where it would raise
    ``RuntimeError: There is no current event loop``. Installed when the function may run more than
    one invocation at once and has imported asyncio (checked after loading and per invocation)."""
    global _LOOP_POLICY
    if _LOOP_POLICY is not None:
        return
    import asyncio

    class ThreadLoopPolicy(asyncio.DefaultEventLoopPolicy):
        def get_event_loop(self):
            try:
                return super().get_event_loop()
            except RuntimeError:
                loop = self.new_event_loop()
                self.set_event_loop(loop)
                return loop

    _LOOP_POLICY = ThreadLoopPolicy()
    asyncio.set_event_loop_policy(_LOOP_POLICY)


class _Invocation:
    __slots__ = ("rid", "deadline", "mono_deadline", "sock", "conn", "ident", "capture", "claimed", "t0", "attempt")

    def __init__(self, rid, deadline, now, sock, conn, ident):
        self.rid, self.deadline, self.sock, self.conn = rid, deadline, sock, conn
        self.t0 = t0 = time.monotonic()  # also the clock of durations (perf_counter is the same clock on Linux)
        self.mono_deadline = t0 + (deadline - now)
        self.ident = ident  # the thread that runs the handler: the main thread, or the connection's
        self.capture = _Capture(f"requestId={rid} ", rid)
        self.claimed = False
        self.attempt = 1


class _Conn:
    __slots__ = ("abandoned", "ident", "result_encoder", "pending")

    def __init__(self):
        self.abandoned = False
        self.pending = None  # (done lock, [outcome]) of an invoke the main thread is running
        self.ident = threading.get_ident()  # the connection's thread, which runs its invocations
        self.result_encoder = _ResultEncoder()


def _quiet_thread():
    """Block SIGTERM in a platform thread (never the main one), so the kernel gives it to the main
    thread, whose wait it interrupts (a lock's wait returns on EINTR to run Python's signal handlers)."""
    import signal
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})


class _Instance:
    def __init__(self, config):
        cfg = {"handler": None, "code_dir": None, "host": "127.0.0.1", "port": 8080, "socket": None,
               "function_name": "function", "function_version": "1", "memory_mb": 128, "timeout_s": 3.0,
               "max_inflight": 1, "instance_id": None, "pool": False, "ready_fd": None}
        cfg.update({k: v for k, v in config.items() if v is not None})
        if not cfg["instance_id"]:
            cfg["instance_id"] = "i-" + os.urandom(6).hex()
        self.cfg = cfg
        self.lock = threading.Lock()
        self.state_changed = threading.Condition(self.lock)
        self.wd_cond = threading.Condition(self.lock)
        self.wd_next = float("inf")
        self.state = POOL if cfg["pool"] else STARTING
        self.max_inflight = max(1, int(cfg["max_inflight"]))
        self.timeout_s = float(cfg["timeout_s"])
        self.inflight = 0
        self.running = set()
        self.invocations = 0
        self.idle_since = time.monotonic()
        self.handler = None
        self.ctx_static = None
        self.init_error = None
        self.init_logs = []
        self.init_ms = None
        self.routes = {}
        self.last_rid = ""  # the request id of log records from threads the handler started
        self.main_ident = None  # set while the main thread runs the jobs loop (handlers may run there)
        self.conns = 0
        self.no_conns = threading.Event()
        self.no_conns.set()
        self.jobs = []
        # The main thread's wake-up: a lock used as a binary semaphore, held while no job is pending.
        # Releasing it does not give up the GIL (a pipe write does), so handing an invocation to the
        # main thread costs two GIL hand-overs and no system call of the connection's thread.
        self.wake = _thread.allocate_lock()
        self.wake.acquire()
        self.listener = None

    # --- process life -------------------------------------------------------------------------------

    def run(self):
        preload()
        _limit_malloc_arenas()
        threading.stack_size(STACK_SIZE)
        self.listener = self._listen()
        return self._serve(load=not self.cfg["pool"])

    def _serve(self, load, ready_extra=None):
        """Announce the listener, start the platform's threads, and run the main thread's jobs loop."""
        import signal
        if threading.current_thread() is threading.main_thread():
            # SIGTERM interrupts the main thread's wait (Linux gives a process-directed signal to the
            # main thread unless it blocks it; the platform's threads block it, see _quiet_thread).
            signal.signal(signal.SIGTERM, lambda *_: self._post(self._on_sigterm))
        # Ready as soon as it listens: connections wait in the backlog until the accept thread runs, so
        # the launcher's next steps overlap the rest of the start.
        fd = self.cfg["ready_fd"]
        if fd is not None:
            where = {"socket": self.cfg["socket"]} if self.cfg["socket"] else {"port": self.listener.getsockname()[1]}
            where.update(ready_extra or {})
            try:
                os.write(fd, (json.dumps(where) + "\n").encode())
                os.close(fd)
            except OSError:
                pass
        self._route_streams()
        # Plain threads, not threading.Thread: start() waits until the new thread has run, a context
        # switch each that cost 0.5-1.2 ms of a cold start on a busy 2-core machine. No user code runs
        # on these two (connection threads, which run handlers, are threading.Thread).
        _thread.start_new_thread(self._watchdog, ())
        _thread.start_new_thread(self._accept_loop, ())
        if threading.current_thread() is threading.main_thread():
            self.main_ident = threading.get_ident()
        if load:
            self._load()
        try:
            while True:  # the main thread runs jobs: code loading, handlers, SIGTERM, the final exit
                while not self.wake.acquire(timeout=SIGNAL_POLL_S):
                    pass  # back in Python for a moment: a pending signal's handler runs (see SIGNAL_POLL_S)
                while self.jobs:
                    if self.jobs.pop(0)():
                        return 0
        finally:
            self._close()

    def _route_streams(self):
        if not isinstance(sys.stdout, _StreamRouter):
            sys.stdout = _StreamRouter(sys.stdout, self.routes)
            sys.stderr = _StreamRouter(sys.stderr, self.routes)

    def _post(self, job):
        """Run ``job`` on the main thread; never blocks, so a signal handler may call it."""
        self.jobs.append(job)
        try:
            self.wake.release()
        except RuntimeError:  # a wake-up is pending already
            pass

    def _listen(self):
        """Sockets of ``_socket``, the C module, directly: importing ``socket.py`` (its enum classes of
        constants) costs 1.5-2.5 ms of every instance's start, and nothing here needs more than the C type."""
        path = self.cfg["socket"]
        if path:
            s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            s.bind(path)
        else:
            s = _socket.socket(_socket.AF_INET6 if ":" in self.cfg["host"] else _socket.AF_INET, _socket.SOCK_STREAM)
            s.setsockopt(_socket.SOL_SOCKET, _socket.SO_REUSEADDR, 1)
            s.bind((self.cfg["host"], int(self.cfg["port"])))
        s.listen(1024)
        return s

    def _close(self):
        _cluster_deregister(self)
        try:
            self.listener.shutdown(_socket.SHUT_RDWR)
        except OSError:
            pass
        self.listener.close()
        if self.cfg["socket"]:
            try:
                os.unlink(self.cfg["socket"])
            except OSError:
                pass
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass

    def _on_sigterm(self):
        with self.lock:
            if self.state != DRAINING:
                self._set_state(DRAINING)
            drained = self.inflight == 0
        return self._finish() if drained else False

    def _finish(self):
        """Drained: give clients a moment to drop their pooled connections, then stop (main thread).

        A connection still in the listen backlog is not counted yet (the accept thread has not taken
        it), and exiting would reset it: while one is pending, wait for the accept thread to take it
        and for it to be answered (``503 draining``) and closed like the others.
        """
        import select
        end = time.monotonic() + DRAIN_GRACE_S
        poller = select.poll()
        poller.register(self.listener.fileno(), select.POLLIN)
        while True:
            left = end - time.monotonic()
            if not self.no_conns.wait(max(left, 0)) or left <= 0:
                return True
            if not poller.poll(0):
                return True
            time.sleep(0.001)  # the accept thread is about to take it

    def _set_state(self, state):  # with self.lock held
        self.state = state
        self.state_changed.notify_all()

    # --- code loading -------------------------------------------------------------------------------

    def _load(self):
        """Import the handler (main thread). Sets READY with the function, or FAILED with the error."""
        import importlib, re  # noqa: E401
        cfg, t0 = self.cfg, time.perf_counter()
        cap = _Capture("")
        self.routes[threading.get_ident()] = cap
        fn = err = None
        try:
            handler, code_dir = cfg["handler"], cfg["code_dir"]
            m = re.match(HANDLER_RE_SRC, handler or "")
            if not m or ".." in handler:
                err = _error("Runtime.MalformedHandlerName",
                             f"Bad handler {handler!r}: expected 'module.function', for example 'index.handler'")
            elif not code_dir:
                err = _error("Runtime.ImportModuleError", "Unable to import module: no code directory given")
            else:
                os.environ.update(lambda_environ(cfg, os.environ))
                time.tzset()
                install_logging(self, os.environ)
                modname, fname = m.group(1).replace("/", "."), m.group(2)
                code_dir = os.path.abspath(code_dir)
                sys.path[:] = import_path(code_dir, sys.path, os.environ.get("PYTHONPATH", ""))
                try:
                    os.chdir(code_dir)
                except OSError:
                    pass
                # Only a directory the import system has looked into already can have a stale listing
                # (code fetched after /_/specialize); otherwise this costs 0.14 ms for nothing.
                if any(isinstance(k, str) and (k == code_dir or k.startswith(code_dir + os.sep))
                       for k in list(sys.path_importer_cache)):
                    importlib.invalidate_caches()
                try:
                    mod = importlib.import_module(modname)
                except SyntaxError as e:
                    import traceback
                    err = _error("Runtime.UserCodeSyntaxError", f"Syntax error in module '{modname}': {e}",
                                 stack=traceback.format_exception_only(type(e), e))
                except BaseException as e:  # noqa: B902 - SystemExit or anything else raised while importing
                    err = _error("Runtime.ImportModuleError",
                                 f"Unable to import module '{modname}': {type(e).__name__}: {e}",
                                 stack=_user_stack(e.__traceback__))
                else:
                    fn = getattr(mod, fname, None)
                    if not callable(fn):
                        fn = None
                        what = "is not callable" if hasattr(mod, fname) else "is missing"
                        err = _error("Runtime.HandlerNotFound", f"Handler '{fname}' {what} in module '{modname}'")
        finally:
            self.routes.pop(threading.get_ident(), None)
        logs = cap.finish()
        if self.max_inflight > 1 and "asyncio" in sys.modules:
            thread_event_loops()
        with self.lock:
            self.ctx_static = _context_static(cfg)
            self.handler, self.init_error, self.init_logs = fn, err, logs
            self.init_ms = round((time.perf_counter() - t0) * 1000, 3)
            self.idle_since = time.monotonic()
            if self.state == STARTING:
                self._set_state(FAILED if err else READY)
        return False

    # --- HTTP ---------------------------------------------------------------------------------------

    def _accept_loop(self):
        _quiet_thread()  # connection threads inherit its signal mask
        tcp = not self.cfg["socket"]
        family = self.listener.family
        while True:
            try:
                fd, _ = self.listener._accept()  # _socket's accept: a file descriptor (no socket.py, see _listen)
            except OSError:
                if self.listener.fileno() < 0:
                    return
                time.sleep(0.01)  # out of file descriptors: let connections close
                continue
            sock = _socket.socket(family, _socket.SOCK_STREAM, 0, fd)
            if tcp:
                sock.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
            with self.lock:
                self.conns += 1
                self.no_conns.clear()
            try:
                threading.Thread(target=self._serve_conn, args=(sock,), daemon=True).start()
            except RuntimeError:  # cannot start a thread (memory): drop the connection
                sock.close()
                self._conn_closed(_Conn())

    def _conn_closed(self, conn):
        with self.lock:
            if not conn.abandoned:
                self.conns -= 1
                if self.conns == 0:
                    self.no_conns.set()

    def _serve_conn(self, sock):
        """Keep-alive loop of one connection: read a request, dispatch it, answer, repeat.

        The parser takes exactly what the contract needs: the request line (three fields, HTTP/1.0 or
        1.1), header lines ``name: value`` into a dict with lower-case names, a body by Content-Length or
        chunked, ``Connection`` / HTTP/1.0 keep-alive rules, and pipelined requests (bytes after one request
        stay in ``buf`` for the next). Malformed input is answered 400 (a head over MAX_HEAD 431, a body
        over MAX_BODY 413) and the connection closed. ``POST /_/invoke`` is matched before the other
        routes. The whole loop costs about 2 us of parsing per request; the rest is the handler call,
        JSON and two system calls.
        """
        conn = _Conn()
        recv, send, buf = sock.recv, sock.sendall, b""
        try:
            while True:
                end = buf.find(b"\r\n\r\n")
                while end < 0:
                    if len(buf) > MAX_HEAD:
                        if conn.pending is not None and self._main_done(conn) is None:
                            return
                        return _refuse(sock, 431, "request head too large")
                    data = recv(65536)
                    if not data:
                        return
                    buf = buf + data if buf else data.lstrip(b"\r\n")  # RFC 9112: ignore CRLFs before a request
                    end = buf.find(b"\r\n\r\n")
                if conn.pending is not None and self._main_done(conn) is None:
                    return  # the main thread could not answer the previous invoke: the connection ends
                if end > MAX_HEAD:
                    return _refuse(sock, 431, "request head too large")
                lines = buf[:end].decode("latin-1").split("\r\n")
                buf = buf[end + 4:]
                try:
                    method, target, version = lines[0].split(" ")
                    headers = {}
                    for i in range(1, len(lines)):
                        k, v = lines[i].split(":", 1)
                        headers[k.strip().lower()] = v.strip()
                except ValueError:  # not three fields, or a header line without a colon
                    return _refuse(sock, 400, "malformed request line or header")
                if version != "HTTP/1.1" and version != "HTTP/1.0":
                    if version.startswith("HTTP/") and version[5:6].isdigit():
                        return _refuse(sock, 505, f"{version} is not supported")
                    return _refuse(sock, 400, "malformed request line")
                if "" in headers or not method:
                    return _refuse(sock, 400, "malformed request line or header")
                conn_hdr = headers.get("connection")
                if conn_hdr is None:
                    keep = version == "HTTP/1.1"
                else:
                    conn_hdr = conn_hdr.lower()
                    keep = ("close" not in conn_hdr) if version == "HTTP/1.1" else ("keep-alive" in conn_hdr)
                te = headers.get("transfer-encoding")
                if te is not None and "chunked" in te.lower():
                    body, buf = self._read_chunked(sock, buf)
                    if body is None:
                        return _refuse(sock, 400, "malformed chunked body")
                else:
                    n = headers.get("content-length")
                    if n is None:
                        n = 0
                    elif n.isdecimal():
                        n = int(n)
                        if n > MAX_BODY:
                            return _refuse(sock, 413, f"the body is larger than {MAX_BODY} bytes")
                    else:
                        return _refuse(sock, 400, "bad Content-Length")
                    if len(buf) < n:
                        if headers.get("expect", "").lower() == "100-continue":
                            send(b"HTTP/1.1 100 Continue\r\n\r\n")
                        parts, have = [buf], len(buf)  # collect the rest in chunks of at most 1 MiB, joined once
                        while have < n:
                            data = recv(min(n - have, 1 << 20))
                            if not data:
                                return
                            parts.append(data)
                            have += len(data)
                        buf = b"".join(parts)
                    body, buf = buf[:n], buf[n:]
                if target == "/_/invoke" and method == "POST":
                    out = self._invoke(headers, body, sock, conn, not keep)
                else:
                    out = self._dispatch(method, target, headers, body, sock, conn, keep)
                if out is _PENDING:
                    if keep:
                        continue  # straight back to recv: the main thread answers this one
                    out = self._main_done(conn)
                if out is None:  # the watchdog answered this invocation (timeout), or the client left
                    return
                if out is not _SENT:  # the main thread sent it (a handler run there)
                    send(out)
                if not keep:
                    return
        except OSError:
            pass
        finally:
            if conn.pending is not None:  # its reply is still being made: not closed under it
                self._main_done(conn)
            self._conn_closed(conn)
            if not conn.abandoned:
                sock.close()

    @staticmethod
    def _main_done(conn):
        """Wait for the invoke the main thread runs for ``conn``: _SENT, or None when the
        connection must end (the watchdog answered it, or the client went away)."""
        done, out = conn.pending
        conn.pending = None
        done.acquire()
        return out[0]

    def _read_chunked(self, sock, buf):
        body = bytearray()
        while True:
            while b"\r\n" not in buf:
                data = sock.recv(65536)
                if not data or len(buf) > MAX_HEAD:
                    return None, b""
                buf += data
            line, buf = buf.split(b"\r\n", 1)
            try:
                size = int(line.split(b";", 1)[0], 16)
            except ValueError:
                return None, b""
            if size == 0:  # skip trailers up to the blank line
                while not buf.startswith(b"\r\n") and b"\r\n\r\n" not in buf:
                    data = sock.recv(65536)
                    if not data:
                        return None, b""
                    buf += data
                buf = buf[2:] if buf.startswith(b"\r\n") else buf.split(b"\r\n\r\n", 1)[1]
                return bytes(body), buf
            while len(buf) < size + 2:
                data = sock.recv(65536)
                if not data:
                    return None, b""
                buf += data
            body += buf[:size]
            buf = buf[size + 2:]
            if len(body) > MAX_BODY:
                return None, b""

    def _dispatch(self, method, target, headers, body, sock, conn, keep):
        path, _, query = target.partition("?")
        close = not keep
        if path == "/_/invoke":
            if method != "POST":
                return _json_response(405, {"error": "use POST"}, close=close)
            return self._invoke(headers, body, sock, conn, close)
        if path == "/_/health" and method == "GET":
            return _json_response(200, self._health(), close=close)
        if path == "/_/ready" and method == "GET":
            return self._ready(query, close)
        if path == "/_/drain" and method == "POST":
            return self._drain(body, close)
        if path == "/_/specialize" and method == "POST":
            return self._specialize(body, close)
        if path == "/_/pool" and method == "GET":
            return _cluster_pool_status(self, close)
        if path in ("/_/health", "/_/ready", "/_/drain", "/_/specialize", "/_/pool"):
            return _json_response(405, {"error": f"method {method} not allowed on {path}"}, close=close)
        return _json_response(404, {"error": f"no such path: {path}"}, close=close)

    # --- endpoints ----------------------------------------------------------------------------------

    def _health(self):
        cfg = self.cfg
        with self.lock:
            return {"state": self.state, "instanceId": cfg["instance_id"], "function": cfg["function_name"],
                    "version": cfg["function_version"], "runtime": RUNTIME, "inflight": self.inflight,
                    "maxInflight": self.max_inflight, "invocations": self.invocations,
                    "idleMs": 0 if self.inflight else int((time.monotonic() - self.idle_since) * 1000),
                    "initDurationMs": self.init_ms, "pid": os.getpid()}

    def _ready(self, query, close):
        """``?waitMs=N`` holds the answer while the code loads, so a starter needs no polling loop."""
        wait = 0.0
        for item in query.split("&"):
            k, _, v = item.partition("=")
            if k == "waitMs":
                try:
                    wait = min(max(float(v), 0.0), 600000.0) / 1000
                except ValueError:
                    pass
        with self.lock:
            if wait and self.state == STARTING:
                self.state_changed.wait_for(lambda: self.state != STARTING, wait)
            state, err = self.state, self.init_error
        if state == READY:
            return _json_response(200, {"state": state, "initDurationMs": self.init_ms}, close=close)
        if state == FAILED:
            return _json_response(500, {"state": state, "error": err, "initDurationMs": self.init_ms,
                                        "logs": self.init_logs}, close=close)
        return _json_response(503, {"state": state}, close=close)

    def _drain(self, body, close):
        try:
            min_idle = float((json.loads(body) if body.strip() else {}).get("minIdleMs") or 0)
        except (ValueError, AttributeError, TypeError):
            return _json_response(400, {"error": "body must be a JSON object like {\"minIdleMs\": 1000}"}, close=close)
        with self.lock:
            if self.state == DRAINING:
                return _json_response(200, {"drained": True}, close=close)
            reason = None
            if self.inflight:
                reason = "busy"
            elif (time.monotonic() - self.idle_since) * 1000 < min_idle:
                reason = "recently-used"
            else:
                self._set_state(DRAINING)
        if reason:
            return _json_response(409, {"drained": False, "reason": reason}, close=close)
        self._post(self._finish)
        return _json_response(200, {"drained": True}, close=close)

    def _specialize(self, body, close):
        try:
            s = json.loads(body)
            if not isinstance(s, dict):
                raise ValueError
            env = s.get("env") or {}
            update = {"function_name": str(s.get("function") or "function"),
                      "function_version": str(s.get("version") or "1"),
                      "handler": s.get("handler"), "code_dir": s.get("codeDir"),
                      "memory_mb": int(s.get("memoryMb") or self.cfg["memory_mb"]),
                      "timeout_s": float(s.get("timeoutS") or self.cfg["timeout_s"]),
                      "max_inflight": max(1, int(s.get("maxInflight") or 1))}
            env = {str(k): str(v) for k, v in env.items()}
            if s.get("instanceId"):
                update["instance_id"] = str(s["instanceId"])
            for key, field, var in (("region", "region", "FAAS_REGION"), ("accountId", "account_id", "FAAS_ACCOUNT_ID")):
                if s.get(key) or env.get(var):
                    update[field] = str(s.get(key) or env[var])
        except (ValueError, TypeError, AttributeError):
            return _json_response(400, {"error": "body must be a JSON object: {function, version, handler, codeDir, "
                                                 "memoryMb, timeoutS, maxInflight, env}"}, close=close)
        with self.lock:
            if self.state != POOL:
                return _json_response(409, {"error": "already specialized", "state": self.state}, close=close)
            self._set_state(STARTING)  # from here on the instance has left the pool (accepted once)
        if not update["code_dir"] and s.get("codeSha256"):
            try:
                update["code_dir"] = _cluster_fetch_code(s.get("codeUrl"), s.get("codeSha256"))
            except Exception as e:  # noqa: BLE001 - any fetch failure: leave, let the platform start elsewhere
                with self.lock:
                    self._set_state(DRAINING)
                self._post(self._finish)
                return _json_response(502, {"error": f"code fetch failed: {type(e).__name__}: {e}"}, close=True)
        with self.lock:
            self.cfg.update(update)
            self.max_inflight, self.timeout_s = update["max_inflight"], update["timeout_s"]
            os.environ.update(env)
        self._post(self._load)
        with self.lock:
            self.state_changed.wait_for(lambda: self.state != STARTING)
            out = {"state": self.state, "function": self.cfg["function_name"],
                   "version": self.cfg["function_version"], "initDurationMs": self.init_ms}
            if self.state == FAILED:
                out["error"], out["logs"] = self.init_error, self.init_logs
        if out["state"] == READY:
            try:
                out["registered"] = _cluster_register(self)
            except Exception as e:  # noqa: BLE001 - unlisted, it would serve nobody: leave
                with self.lock:
                    self._set_state(DRAINING)
                self._post(self._finish)
                return _json_response(502, {"error": f"Consul registration failed: {type(e).__name__}: {e}"},
                                      close=True)
        return _json_response(200, out, close=close)

    def _invoke(self, headers, body, sock, conn, close):
        rid = headers.get("x-request-id") or _new_request_id()
        now = time.time()
        try:
            deadline = float(headers["x-deadline-ms"]) / 1000
        except (KeyError, ValueError):
            deadline = now + self.timeout_s
        try:
            event = _parse_event(body)
        except ValueError as e:  # includes bad UTF-8
            return _json_response(400, {"ok": False, "error": _error("Runtime.InvalidEvent",
                                        f"The event is not valid JSON: {e}", rid)}, close=close)
        on_main = self.max_inflight == 1 and self.main_ident is not None
        inv = _Invocation(rid, deadline, now, sock, conn, self.main_ident if on_main else conn.ident)
        attempt = headers.get("x-faas-attempt")
        if attempt:
            inv.attempt = int(attempt) if attempt.isdigit() else 1
        refused = answer = None
        with self.lock:
            state = self.state
            if state == READY:
                if self.inflight >= self.max_inflight:
                    refused = "capacity"
                elif deadline <= now:  # spent before it arrived: answer without running anything
                    answer = _error("Function.Timeout", "Task timed out before it started: the deadline had passed", rid)
                else:
                    self.inflight += 1
                    self.running.add(inv)
                    if inv.mono_deadline < self.wd_next:
                        self.wd_cond.notify()
            elif state == FAILED:
                answer = dict(self.init_error, requestId=rid)
            else:
                refused = "draining" if state == DRAINING else "starting"
        if refused:
            return _json_response(503, {"refused": refused}, f"X-Faas-Refused: {refused}\r\n", close)
        if answer:
            logs = self.init_logs if state == FAILED else []
            return _json_response(200, {"ok": False, "error": answer, "logs": logs, "durationMs": 0},
                                  close=close)
        cap, ident = inv.capture, inv.ident
        self.last_rid = rid
        if on_main:
            return self._invoke_on_main(inv, event, deadline, close)
        if _LOOP_POLICY is None and "asyncio" in sys.modules:
            thread_event_loops()
        routes = self.routes
        routes[ident] = cap
        payload, error = self._call(inv, event, deadline)
        del routes[ident]
        return self._reply(inv, payload, error, close)

    def _reply(self, inv, payload, error, close):
        """The invoke reply's bytes after the handler ran, or None when the watchdog answered already."""
        end = time.monotonic()
        logs = inv.capture.finish()
        with self.lock:
            if inv.claimed:  # the watchdog already answered with Function.Timeout
                return None
            inv.claimed = True
            self.running.discard(inv)
            self.inflight -= 1
            self.invocations += 1
            self.idle_since = end
            drained = self.state == DRAINING and self.inflight == 0
        if drained:
            self._post(self._finish)
        # One str, encoded once (it is ASCII); "%.3f" rather than repr(round(x, 3)): the same number, 0.2 us less.
        tail = (',"logs":' + (_ENC.encode(logs) if logs else "[]") + ',"durationMs":'
                + "%.3f" % ((end - inv.t0) * 1000) + "}")
        body = ('{"ok":true,"result":' + payload if error is None else '{"ok":false,"error":' + _ENC.encode(error)) + tail
        return (_OK_HEAD + str(len(body)) + (_END_CLOSE if close else _END_KEEP) + body).encode()

    def _invoke_on_main(self, inv, event, deadline, close):
        """Run the handler on the main thread (Lambda's model). The main thread sends the reply too, so
        the answer does not wait for the connection's thread to be scheduled again. Returns _PENDING:
        the connection's thread goes straight back to reading the connection and waits for this job
        (:meth:`_main_done`) only once the next request (or the end of the connection) has arrived,
        before it acts on it, so requests on one connection are still answered one at a time and in
        order. Waiting here instead cost a third thread wake-up and GIL hand-over per invocation
        (the connection's thread woken just to go back to ``recv``). Measured on a shared 2-core VM
        (load 1.7-3.6), old and new alternating: ``bench.runtime_cpu`` (Unix socket, 6 runs of 6-8
        rounds of 10,000) gave a median instance CPU per request of 66.5 us before (49.3-77.3 over the
        runs) and 49.6 us after (34.2-61.4), lower in 5 runs of 6; the direct ``POST /_/invoke`` p50 to
        an appliance's instance (10 appliances each) went from 0.178 ms (0.103-0.371) to 0.119 ms
        (0.097-0.194), lower in 9 of 10 pairs. Through the edge the change is within that machine's
        noise (see bench/results/findings.md, "Warm path, third round")."""
        done = _thread.allocate_lock()
        done.acquire()
        out = [None]

        def job():
            try:
                self.routes[inv.ident] = inv.capture
                try:
                    payload, error = self._call(inv, event, deadline)
                finally:
                    self.routes.pop(inv.ident, None)
                reply = self._reply(inv, payload, error, close)
                if reply is not None:
                    inv.sock.sendall(reply)
                    out[0] = _SENT
            except OSError:
                pass
            finally:
                done.release()
            return False

        inv.conn.pending = (done, out)
        self._post(job)
        return _PENDING

    def _call(self, inv, event, deadline):
        """Run the handler; returns (result JSON text, None) or (None, structured error)."""
        rid = inv.rid
        try:
            try:
                result = self.handler(event, LambdaContext(rid, deadline, inv.capture, self.ctx_static, inv.attempt))
            except MemoryError as e:
                return None, _error("Function.OutOfMemory", f"MemoryError: {e}", rid, _user_stack(e.__traceback__))
            except BaseException as e:  # noqa: B902 - whatever the handler raised (even SystemExit) is the answer
                return None, _error("Function.Error", f"{type(e).__name__}: {e}", rid, _user_stack(e.__traceback__))
            try:
                return inv.conn.result_encoder.encode(result), None
            except MemoryError as e:
                return None, _error("Function.OutOfMemory", f"MemoryError: {e}", rid)
            except Exception as e:  # TypeError, ValueError (NaN, circular), RecursionError
                return None, _error("Runtime.ResultNotSerializable",
                                    f"The handler's result cannot be encoded as JSON: {type(e).__name__}: {e}", rid)
        except MemoryError:  # building the error itself ran out of memory
            return None, _error("Function.OutOfMemory", "MemoryError", rid)

    # --- deadlines ----------------------------------------------------------------------------------

    def _watchdog(self):
        """Sleep until the earliest running deadline; answer and exit for any invocation past it."""
        _quiet_thread()
        while True:
            with self.lock:
                now = time.monotonic()
                expired = [i for i in self.running if i.mono_deadline <= now]
                if not expired:
                    nxt = min((i.mono_deadline for i in self.running), default=now + max(self.timeout_s, 1.0))
                    self.wd_next = nxt
                    self.wd_cond.wait(nxt - now)
                    continue
                for inv in expired:
                    inv.claimed = True
                    inv.conn.abandoned = True
                    self.running.discard(inv)
                    self.inflight -= 1
                    self.invocations += 1
                    self.conns -= 1
                    if self.conns == 0:
                        self.no_conns.set()
                if self.state != DRAINING:
                    self._set_state(DRAINING)
                drained = self.inflight == 0
            for inv in expired:
                self._answer_timeout(inv)
            if any(inv.ident == self.main_ident for inv in expired):
                # The main thread is stuck in the handler and cannot run the exit job: leave from here.
                self._finish()
                self._close()
                os._exit(0)
            if drained:
                self._post(self._finish)

    def _answer_timeout(self, inv):
        import traceback
        frame = sys._current_frames().get(inv.ident)
        stack = [s for s in traceback.format_stack(frame) if _THIS_FILE not in s] if frame else []
        cap = inv.capture
        logs = list(cap.lines) + ([cap.partial] if cap.partial else [])
        took = time.monotonic() - inv.t0
        body = {"ok": False, "error": _error("Function.Timeout", f"Task timed out after {took:.2f} seconds",
                                             inv.rid, stack), "logs": logs, "durationMs": round(took * 1000, 3)}
        try:
            inv.sock.sendall(_json_response(200, body, "X-Faas-Exiting: 1\r\n", close=True))
            inv.sock.shutdown(_socket.SHUT_WR)
        except OSError:
            pass


# --- cluster mode (runtimes/README.md section 6): pool readiness, code fetch, Consul registration ---
#
# Kept apart from the server above: none of it runs unless the platform asks for it (a GET of
# /_/pool, a /_/specialize with codeSha256, CONSUL_HTTP_ADDR in the environment).

CODE_MAX_ZIP = 50 << 20
CODE_MAX_UNPACKED = 250 << 20


def _cluster_pool_status(inst, close):
    """The pool service's check: 200 while generic and unclaimed, 503 once specialised."""
    with inst.lock:
        state = inst.state
    return _json_response(200 if state == POOL else 503, {"state": state}, close=close)


def _cluster_fetch_code(url, digest):
    """Fetch, verify and unpack a code package into ``$FAAS_CODE_CACHE_DIR/<digest>`` once per node.

    The file lock is the one ``python -m appliance instance`` takes, so pooled and dispatched
    instances on one node never fetch the same digest twice."""
    import fcntl, hashlib, io, re, stat, tempfile, urllib.request, zipfile  # noqa: E401
    if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise ValueError("codeSha256 must be 64 lowercase hex digits")
    cache = os.environ.get("FAAS_CODE_CACHE_DIR") or os.path.join(tempfile.gettempdir(), "faas-code")
    dest = os.path.join(cache, digest)
    if os.path.isdir(dest):
        return dest
    if not url:
        raise ValueError("the code is not cached on this node and no codeUrl was given")
    os.makedirs(cache, exist_ok=True)
    with open(os.path.join(cache, f".{digest}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if os.path.isdir(dest):
            return dest
        t0 = time.monotonic()
        with urllib.request.urlopen(url, timeout=60) as r:
            data = r.read(CODE_MAX_ZIP + 1)
        if len(data) > CODE_MAX_ZIP:
            raise ValueError(f"the package is larger than {CODE_MAX_ZIP} bytes")
        if hashlib.sha256(data).hexdigest() != digest:
            raise ValueError("the downloaded package does not match codeSha256")
        tmp = tempfile.mkdtemp(prefix=f".{digest}.", dir=cache)
        total = 0
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            for info in zf.infolist():
                name = info.filename
                parts = name.split("/")
                if name.startswith("/") or "\\" in name or ":" in name or ".." in parts:
                    raise ValueError(f"unsafe entry name {name!r}")
                if stat.S_ISLNK(info.external_attr >> 16):
                    raise ValueError(f"entry {name!r} is a symbolic link")
                target = os.path.join(tmp, *[p for p in parts if p])
                if info.is_dir():
                    os.makedirs(target, exist_ok=True)
                    continue
                os.makedirs(os.path.dirname(target), exist_ok=True)
                with zf.open(info) as src, open(target, "xb") as out:
                    while True:
                        chunk = src.read(1 << 16)
                        if not chunk:
                            break
                        total += len(chunk)
                        if total > CODE_MAX_UNPACKED:
                            raise ValueError(f"the package unpacks to more than {CODE_MAX_UNPACKED} bytes")
                        out.write(chunk)
        os.rename(tmp, dest)
        print(f"[faas] event=code_fetched digest={digest} bytes={len(data)} ms={(time.monotonic() - t0) * 1000:.1f}",
              file=sys.__stderr__, flush=True)
    return dest


def _cluster_consul(cfg, method, path, body=None):
    """One request to the node's Consul agent, with the instance's token when it has one (an
    empty token is none: Consul then applies its anonymous token)."""
    import urllib.request
    addr = cfg["consul_addr"]
    addr = addr if "://" in addr else "http://" + addr
    req = urllib.request.Request(addr.rstrip("/") + path, method=method,
                                 data=None if body is None else json.dumps(body).encode())
    if cfg.get("consul_token"):
        req.add_header("X-Consul-Token", cfg["consul_token"])
    with urllib.request.urlopen(req, timeout=5) as r:
        return r.status


def _cluster_register(inst):
    """A specialised pool instance lists itself as ``fn-<function>`` through the node's Consul agent,
    with an HTTP check on /_/ready; returns the service ID, or None outside cluster mode."""
    cfg = inst.cfg
    if not cfg.get("consul_addr"):
        return None
    host, port = cfg["host"], inst.listener.getsockname()[1]
    name, version, iid = cfg["function_name"], cfg["function_version"], cfg["instance_id"]
    sid = f"fn-{name}-{iid}"
    _cluster_consul(cfg, "PUT", "/v1/agent/service/register", {
        "ID": sid, "Name": f"fn-{name}", "Address": host, "Port": port,
        "Tags": ["faas", f"function={name}", f"version={version}", f"instance={iid}", "source=pool"],
        "Meta": {"function": name, "version": version, "instance_id": iid, "runtime": RUNTIME,
                 "concurrency": str(inst.max_inflight), "source": "pool"},
        # Registered only once the code has loaded, so it starts passing: Consul would otherwise
        # keep it critical until its first probe, up to one interval later (a random stagger).
        "Check": {"CheckID": f"{sid}-ready", "Name": "ready", "HTTP": f"http://{host}:{port}/_/ready",
                  "Status": "passing",
                  "Interval": os.environ.get("FAAS_CHECK_INTERVAL") or "2s", "Timeout": "1s",
                  "DeregisterCriticalServiceAfter": "1m"}})
    inst.consul_service_id = sid
    return sid


def _cluster_deregister(inst):
    sid = getattr(inst, "consul_service_id", None)
    if not sid:
        return
    try:
        _cluster_consul(inst.cfg, "PUT", f"/v1/agent/service/deregister/{sid}")
    except Exception:  # noqa: BLE001 - Consul reaps it after DeregisterCriticalServiceAfter
        pass


def main():
    try:
        config = config_from_env(os.environ)
    except ValueError as e:
        print(f"bootstrap: bad setting: {e}", file=sys.stderr)
        return 2
    code = serve(config)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
