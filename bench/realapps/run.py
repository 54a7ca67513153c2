"""Runs the real-application benchmark: one appliance (each app deployed twice, ``snapshot: auto``
and ``snapshot: off``) and serverless-offline (a cold server and a warm server), all started
together; cold samples interleaved app by app and mode by mode, then warm latency and idle memory.

What "cold" means per mode:

* appliance (both modes): ``keep_alive_s=0``, so the reaper (every 0.1 s) drains the instance after
  each request; wait until the API lists no instance of the function and its process is gone,
  wait 50 ms, time one ``POST <prefix>/orders`` on a new connection through the edge. Its
  ``Server-Timing`` must say ``cold``; in snapshot mode ``cold;desc="snapshot"`` (with a
  ``restore`` phase) marks a start from the template, counted per cause.
* serverless-offline: a server started with ``--reloadHandler`` (a new Python child, i.e. a new
  interpreter importing the handler, for every request) and ``--terminateIdleLambdaTime 1``
  (idle children are killed after 1-2 s); wait until no Python child of that app is left, wait
  50 ms, time one request, and check that a new child of that app now exists.

An appliance that does not know the ``snapshot`` setting (400, unknown field) gets the no-snapshot
function deployed without it (it has no snapshots to turn off) and the snapshot mode is recorded
as not available.
"""

from __future__ import annotations

import json
import os
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import psutil

from .. import httpc, procs
from ..memory import per_instance
from ..peers import Appliance, free_port, parse_server_timing, sls_command, sls_env
from ..stats import summarize
from . import APPS, ORDER_BODY, App, build, check_answer
from .evaluate import MODE_LABELS, MODES, cold_kinds, compute, find_template

HEADERS = {"Content-Type": "application/json"}


@dataclass
class Plan:
    cold_runs: int = 20
    cold_discard: int = 1
    cold_budget_s: float = 240.0
    warm_n: int = 200
    apps: tuple = tuple(APPS)

    @classmethod
    def make(cls, quick: bool, cold_runs: int | None = None) -> Plan:
        p = cls(cold_runs=6, cold_budget_s=50.0, warm_n=100) if quick else cls()
        if cold_runs is not None:
            p.cold_runs = cold_runs
        return p


class ModeFailed(RuntimeError):
    pass


def refused_snapshot(status: int, field: str | None, message: str) -> bool:
    """Whether an API error is an appliance refusing the ``snapshot`` setting it does not know
    (400 with that field, or naming it in the message), as opposed to any other failure."""
    return status == 400 and (field == "snapshot" or "'snapshot'" in (message or ""))


def _target(port: int, path: str) -> httpc.Target:
    return httpc.Target("127.0.0.1", port, path, "POST", ORDER_BODY, HEADERS)


def warm_latencies(t: httpc.Target, app: App, n: int) -> list[float]:
    """``n`` back-to-back requests on one keep-alive connection (each answer checked)."""
    conn = httpc.connection(t)
    out: list[float] = []
    try:
        for _ in range(n):
            r = httpc.send(conn, t)
            check_answer(app, r.status, r.body)
            out.append(r.ms)
    finally:
        conn.close()
    return out


# -- appliance --------------------------------------------------------------------------------------


class ApplianceSide:
    """One appliance; per app two functions, ``ra-<app>-snap`` (snapshot auto) and ``ra-<app>-off``."""

    MODE_SETTING = {"snapshot": "auto", "no-snapshot": "off"}

    def __init__(self, ctx):
        class _Peer(Appliance):
            name = "realapps-appliance"
        self.peer = _Peer(ctx)
        self.available: dict[str, str | None] = {}     # mode -> None (available) or why not
        self.notes: list[str] = []
        self.timings: dict[tuple[str, str], list[dict]] = {}
        self._last_pids: dict[str, set[int]] = {}

    @staticmethod
    def fname(app: App, mode: str) -> str:
        return f"ra-{app.name.split('_')[0]}-{'snap' if mode == 'snapshot' else 'off'}"

    @staticmethod
    def prefix(app: App, mode: str) -> str:
        return f"/{'snap' if mode == 'snapshot' else 'off'}{app.prefix}"

    def start(self) -> None:
        self.peer.boot()

    def deploy(self, app: App, mode: str, bundle_zip: Path) -> None:
        from appliance.client import ApiError

        name, prefix = self.fname(app, mode), self.prefix(app, mode)
        settings = dict(runtime="python3.11", handler="app.handler", memory_mb=256, timeout_s=30, concurrency=1,
                        keep_alive_s=0, environment={**app.env, "APP_PREFIX": prefix})
        trig = [{"method": "POST", "path": app.path(prefix)}]
        try:
            self.peer.api.deploy(name, bundle_zip, triggers=trig, snapshot=self.MODE_SETTING[mode], **settings)
        except ApiError as exc:
            if not refused_snapshot(exc.status, exc.field, exc.message):
                raise
            why = f"this appliance does not know the `snapshot` setting ({exc.status} {exc.code}, unknown field)"
            if mode == "snapshot":
                self.available[mode] = why
                return
            # No snapshots to turn off: the plain function is the no-snapshot mode.
            note = f"{why}; no-snapshot functions were deployed without it (this build has no snapshots)"
            if note not in self.notes:
                self.notes.append(note)
            self.peer.api.deploy(name, bundle_zip, triggers=trig, **settings)
        self.available.setdefault(mode, None)

    def target(self, app: App, mode: str) -> httpc.Target:
        return _target(self.peer.target.port, app.path(self.prefix(app, mode)))

    def _instances(self, name: str) -> list[dict]:
        return self.peer.api._req("GET", f"/v1/functions/{name}/instances").json()["instances"]

    def _pids(self, name: str) -> set[int]:
        return {i["pid"] for i in self.peer.api.get_function(name).get("instances", []) if i.get("pid")}

    def cold_once(self, app: App, mode: str) -> float:
        name = self.fname(app, mode)
        end = time.monotonic() + 30
        while self._instances(name) or any(psutil.pid_exists(p) for p in self._last_pids.get(name, ())):
            if time.monotonic() > end:
                raise ModeFailed(f"{name} kept an instance for 30 s with keep_alive_s=0")
            time.sleep(0.02)
        time.sleep(0.05)
        r = httpc.once(self.target(app, mode))
        check_answer(app, r.status, r.body)
        timing = parse_server_timing(r.headers.get("server-timing", ""))
        if "cold" not in timing:
            raise ModeFailed(f"{name}: expected a cold start, Server-Timing says {r.headers.get('server-timing')!r}")
        self.timings.setdefault((app.name, mode), []).append(timing)
        self._last_pids[name] = self._pids(name)        # the next sample waits until they are gone
        return r.ms

    def to_warm(self, app: App, mode: str) -> None:
        self.peer.api.update_function(self.fname(app, mode), keep_alive_s=600)

    def memory(self, app: App, mode: str) -> dict:
        pids = self._pids(self.fname(app, mode))
        return per_instance(self.peer.proc.pid, lambda p: p.pid in pids)

    def template(self, app: App, mode: str) -> dict | None:
        """The snapshot template of the function, if the API describes one (with its memory)."""
        found = find_template(self.peer.api.get_function(self.fname(app, mode)))
        if found is None:
            found = find_template(self.peer.api.health())
        if found and found.get("pid") and "uss_mb" not in found:
            try:
                m = psutil.Process(found["pid"]).memory_full_info()
                found.update(uss_mb=m.uss / 2**20, pss_mb=getattr(m, "pss", m.uss) / 2**20, rss_mb=m.rss / 2**20)
            except psutil.Error as exc:
                found["error"] = f"{exc.__class__.__name__}: {exc}"
        return found

    def stop(self) -> int:
        self.peer.stop()
        return self.peer.orphans


# -- serverless-offline --------------------------------------------------------------------------------


def serverless_yml(bundles: dict[str, Path], names) -> str:
    """A service with one python3.11 function per app: ``app.handler`` imported from the app's
    bundle directory (``PYTHONPATH``), an httpApi route ``POST <prefix>/orders``."""
    lines = ["# written by bench/realapps/run.py: the real applications behind serverless-offline",
             "service: bench-realapps", 'frameworkVersion: "3"', "provider:", "  name: aws",
             "  runtime: python3.11", "  region: us-east-1", "  stage: bench", "functions:"]
    for n in names:
        app = APPS[n]
        lines += [f"  {n.replace('_', '-')}:", "    handler: app.handler", "    memorySize: 256", "    timeout: 30",
                  "    environment:", f"      PYTHONPATH: {json.dumps(str(bundles[n]))}"]
        lines += [f"      {k}: {json.dumps(v)}" for k, v in app.env.items()]
        lines += ["    events:", "      - httpApi:", "          method: POST", f"          path: {app.path()}"]
    lines += ["plugins:", "  - serverless-offline", ""]
    return "\n".join(lines)


class SlsServer:
    def __init__(self, ctx, service: Path, *, cold: bool):
        self.ctx, self.service, self.cold = ctx, service, cold
        self.port, self.lambda_port = free_port(), free_port()
        self.proc = None
        self.orphans = 0
        self.log = ctx.run_dir / "logs" / f"realapps-sls-{'cold' if cold else 'warm'}.log"

    def start(self) -> None:
        extra = ("--reloadHandler", "--terminateIdleLambdaTime", "1") if self.cold else ()
        self.proc = procs.spawn(sls_command(self.ctx.installed["npm"], self.port, self.lambda_port, *extra),
                                log=self.log, env=sls_env(self.ctx, self.service), cwd=self.service)

    def stop(self) -> None:
        self.orphans += procs.stop(self.proc)
        self.proc = None


class SlsSide:
    """Two serverless-offline servers on the same service: one for cold samples (a new Python child
    per request), one with default options for warm latency and memory (its child kept warm)."""

    def __init__(self, ctx, workdir: Path, bundles: dict[str, Path], names):
        self.bundles = {n: str(bundles[n]) for n in names}
        service = workdir / "service"
        service.mkdir(parents=True, exist_ok=True)
        (service / "serverless.yml").write_text(serverless_yml(bundles, names))
        link = service / "node_modules"
        if not link.exists():
            link.symlink_to(ctx.installed["npm"] / "node_modules", target_is_directory=True)
        self.cold_srv = SlsServer(ctx, service, cold=True)
        self.warm_srv = SlsServer(ctx, service, cold=False)

    def start(self) -> None:
        self.cold_srv.start()
        self.warm_srv.start()

    def wait_up(self, app: App) -> None:
        for srv in (self.cold_srv, self.warm_srv):
            r = httpc.wait_ok(_target(srv.port, app.path()), 90.0, interval_s=0.05, proc=srv.proc)
            check_answer(app, r.status, r.body)

    def target(self, app: App, warm: bool = False) -> httpc.Target:
        return _target((self.warm_srv if warm else self.cold_srv).port, app.path())

    def _is_child_of(self, app: App):
        want = self.bundles[app.name]

        def is_leaf(p: psutil.Process) -> bool:
            try:
                cmd = p.cmdline()
                if not (cmd and "python" in os.path.basename(cmd[0]) and any(c.endswith("invoke.py") for c in cmd)):
                    return False
                return p.environ().get("PYTHONPATH") == want
            except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
                return False
        return is_leaf

    def _children(self, srv: SlsServer, app: App) -> set[int]:
        is_leaf = self._is_child_of(app)
        try:
            return {p.pid for p in psutil.Process(srv.proc.pid).children(recursive=True) if is_leaf(p)}
        except psutil.NoSuchProcess:
            return set()

    def cold_once(self, app: App) -> float:
        end = time.monotonic() + 15
        while self._children(self.cold_srv, app):
            if time.monotonic() > end:
                raise ModeFailed(f"serverless-offline kept a Python child of {app.name} for 15 s "
                                 "with --terminateIdleLambdaTime 1")
            time.sleep(0.02)
        time.sleep(0.05)
        r = httpc.once(self.target(app))
        check_answer(app, r.status, r.body)
        if not self._children(self.cold_srv, app):
            raise ModeFailed(f"no new Python child of {app.name} after a cold request to serverless-offline")
        return r.ms

    def memory(self, app: App) -> dict:
        return per_instance(self.warm_srv.proc.pid, self._is_child_of(app))

    def stop(self) -> int:
        self.cold_srv.stop()
        self.warm_srv.stop()
        return self.cold_srv.orphans + self.warm_srv.orphans


# -- the run ---------------------------------------------------------------------------------------------


def run(ctx, plan: Plan, cache: Path) -> dict:
    """The ``realapps`` section of the results document (never raises for a failing mode)."""
    log = ctx.log
    t_start = time.monotonic()
    names = list(plan.apps)
    doc: dict = {"plan": {"cold_runs": plan.cold_runs, "cold_discarded": plan.cold_discard,
                          "cold_budget_s": plan.cold_budget_s, "warm_requests": plan.warm_n, "apps": names,
                          "memory_mb": 256},
                 "modes": {m: MODE_LABELS[m] for m in MODES}, "notes": [], "apps": {}}
    try:
        built = build.build_all(cache, log, names)
    except build.BuildError as exc:
        doc["error"] = f"vendoring failed: {exc}"
        log(f"[realapps] FAILED: {doc['error']}")
        return doc
    doc["builds"] = {n: {"requirements": str(APPS[n].requirements.relative_to(APPS[n].dir.parents[2])),
                         "bundle": str(b["dir"]), "zip_bytes": b["zip_bytes"], "files": b["files"]}
                     for n, b in built.items()}
    apps = {n: {"label": APPS[n].label, "modes": {m: {"available": False} for m in MODES}} for n in names}
    doc["apps"] = apps
    work = ctx.run_dir / "realapps"
    appl = ApplianceSide(ctx)
    sls = SlsSide(ctx, work / "serverless-offline", {n: b["dir"] for n, b in built.items()}, names) \
        if ctx.installed.get("npm") else None
    if sls is None:
        why = "node or npm is not installed (Debian: apt-get install nodejs npm)"
        for n in names:
            apps[n]["modes"]["serverless-offline"] = {"available": False, "reason": why}
    samples: dict[tuple[str, str], list[float]] = {}
    dead: dict[tuple[str, str], str] = {}

    def fail(n: str, m: str, exc: BaseException) -> None:
        dead[(n, m)] = f"{exc.__class__.__name__}: {exc}"
        apps[n]["modes"][m].update(available=True, error=dead[(n, m)], traceback=traceback.format_exc())
        log(f"[realapps] {n} / {m} FAILED: {dead[(n, m)]}")

    try:
        log("[realapps] starting the appliance and serverless-offline")
        if sls:
            sls.start()
        try:
            t = time.monotonic()
            appl.start()
            log(f"[realapps] appliance up in {time.monotonic() - t:.1f} s")
            for n in names:
                t = time.monotonic()
                for m in ("snapshot", "no-snapshot"):
                    appl.deploy(APPS[n], m, built[n]["zip"])
                log(f"[realapps] {n} deployed in {time.monotonic() - t:.1f} s")
        except Exception as exc:  # noqa: BLE001 - serverless-offline's figures are still worth having
            for n in names:
                for m in ("snapshot", "no-snapshot"):
                    fail(n, m, exc)
        for m in ("snapshot", "no-snapshot"):
            if appl.available.get(m):
                for n in names:
                    apps[n]["modes"][m] = {"available": False, "reason": appl.available[m]}
                    dead[(n, m)] = appl.available[m]
        doc["notes"] += appl.notes
        if sls:
            for n in names:
                try:
                    t = time.monotonic()
                    sls.wait_up(APPS[n])
                    log(f"[realapps] {n} answers on serverless-offline ({time.monotonic() - t:.1f} s)")
                except Exception as exc:  # noqa: BLE001
                    fail(n, "serverless-offline", exc)
        else:
            for n in names:
                dead[(n, "serverless-offline")] = "not installed"

        def sample(n: str, m: str) -> float:
            app = APPS[n]
            return sls.cold_once(app) if m == "serverless-offline" else appl.cold_once(app, m)

        # -- cold: app after app, mode after mode, in each iteration ------------------------------
        t0 = time.monotonic()
        total = plan.cold_discard + plan.cold_runs
        done = 0
        for i in range(total):
            if i >= plan.cold_discard + 3 and time.monotonic() - t0 > plan.cold_budget_s:
                doc["notes"].append(f"cold phase stopped after {done} samples per mode "
                                    f"(budget {plan.cold_budget_s:.0f} s)")
                break
            for n in names:
                for m in MODES:
                    if (n, m) in dead:
                        continue
                    try:
                        ms = sample(n, m)
                    except (KeyboardInterrupt, procs.Interrupted):
                        raise
                    except Exception as exc:  # noqa: BLE001 - one failing mode must not lose the others
                        fail(n, m, exc)
                        continue
                    if i >= plan.cold_discard:
                        samples.setdefault((n, m), []).append(ms)
            done = max(0, i + 1 - plan.cold_discard)
            log(f"[realapps] cold iteration {i + 1}/{total} ({time.monotonic() - t0:.0f} s)")
        doc["cold_phase_s"] = round(time.monotonic() - t0, 1)

        # -- warm latency, idle memory, templates ----------------------------------------------
        for n in names:
            app = APPS[n]
            for m in MODES:
                if (n, m) in dead:
                    continue
                out = apps[n]["modes"][m]
                try:
                    out["available"] = True
                    out["cold_ms"] = summarize(samples.get((n, m), []))
                    out["cold_ms"]["samples"] = [round(x, 3) for x in samples.get((n, m), [])]
                    if m == "serverless-offline":
                        t = sls.target(app, warm=True)
                    else:
                        timings = appl.timings.get((n, m), [])[plan.cold_discard:]
                        out["cold_phases_p50_ms"] = _phase_medians(timings)
                        out["cold_causes"] = cold_kinds(timings)
                        if m == "snapshot" and timings and not out["cold_causes"].get("snapshot"):
                            doc["notes"].append(f"{n}: snapshot auto was accepted, but no cold sample started from "
                                                f"a template (causes: {out['cold_causes']})")
                        appl.to_warm(app, m)
                        t = appl.target(app, m)
                    httpc.once(t)                              # a warm instance, then the measured run
                    out["warm_ms"] = summarize(warm_latencies(t, app, plan.warm_n))
                    httpc.once(t)
                    time.sleep(0.3)
                    mem = sls.memory(app) if m == "serverless-offline" else appl.memory(app, m)
                    out["memory"] = {k: mem.get(k) for k in ("instances", "uss_mb", "pss_mb", "rss_mb")}
                    if m != "serverless-offline":
                        out["template"] = appl.template(app, m)
                    c = out["cold_ms"]
                    log(f"[realapps] {n} / {m}: cold p50 {_f(c['p50'])} ms p99 {_f(c['p99'])} ms, warm p50 "
                        f"{_f(out['warm_ms']['p50'], 2)} ms, USS {_f(mem.get('uss_mb'))} MB")
                except (KeyboardInterrupt, procs.Interrupted):
                    raise
                except Exception as exc:  # noqa: BLE001
                    fail(n, m, exc)
    finally:
        orphans = appl.stop() + (sls.stop() if sls else 0)
        doc["orphans_ended_after_stop"] = orphans
    doc["computed"] = compute(apps)
    doc["seconds"] = round(time.monotonic() - t_start, 1)
    return doc


def _phase_medians(timings: list[dict]) -> dict:
    from ..runner import _phase_medians as medians
    return medians(timings)


def _f(v, digits: int = 1) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def failed(doc: dict) -> bool:
    """Whether a mode that was available failed (not-available modes are not failures)."""
    if doc.get("error"):
        return True
    return any(r.get("error") for a in doc.get("apps", {}).values() for r in a["modes"].values())
