"""HTTP double of the Consul API subset the appliance uses (reference §15-§21, checklist §25
items 9-14).

State is kept in one :class:`ConsulDouble` object; every write bumps a Raft-like index and wakes
blocking queries through one condition variable. HTTP and TCP checks are really probed against
the registered address; TTL checks expire; services whose check stays critical are reaped after
``DeregisterCriticalServiceAfter``; sessions expire and release or delete their locks.

ACLs are off unless ``acl_tokens`` is given: then the default policy is deny. ``acl_tokens`` maps
each SecretID to its policy rules (HCL text, as in playbooks/roles/appliance/files/acl/) or to None
for a management token; a plain collection of SecretIDs makes them all management tokens. A
request without a token is the anonymous token (``anonymous_rules``, default: nothing), one with
an unknown token gets 403 ``ACL not found``. Writes without the right get 403 ``Permission
denied``; list reads (health, catalog, KV recurse/keys, sessions) answer 200 with what the token
may read, and ``X-Consul-Results-Filtered-By-ACLs: true`` when something was left out
(agent/consul/health_endpoint.go, catalog_endpoint.go: filtered, never refused).

The first probe of an HTTP or TCP check runs after a random stagger of up to its interval, as the
agent does (``probe_stagger=False`` probes at once).

Simplified (see README.md in this directory): one datacenter, no ACL policies, no jitter on blocking waits, output-only
changes of a check do not bump the index (as the agent's deferred sync), script/gRPC checks keep
their initial status.
"""
from __future__ import annotations

import base64
import json
import random
import threading
import time
import uuid
from urllib.parse import unquote

import requests

from .acl import ConsulAuthorizer
from ._http import App, BlockingQueries, DoubleServer, HTTPError, as_json, format_go_duration, parse_go_duration, text

PASSING, WARNING, CRITICAL = "passing", "warning", "critical"
_STATUSES = (PASSING, WARNING, CRITICAL)

# Known body fields (lower-cased) for the strict decoder of §15: unknown keys give 400.
# snake_case aliases map to the canonical lower-case name.
_ALIASES = {
    "enable_tag_override": "enabletagoverride", "tagged_addresses": "taggedaddresses",
    "deregister_critical_service_after": "deregistercriticalserviceafter",
    "tls_skip_verify": "tlsskipverify", "tls_server_name": "tlsservername",
    "grpc_use_tls": "grpcusetls", "script_args": "args", "scriptargs": "args",
    "service_id": "serviceid", "docker_container_id": "dockercontainerid",
    "success_before_passing": "successbeforepassing",
    "failures_before_critical": "failuresbeforecritical",
    "failures_before_warning": "failuresbeforewarning", "output_max_size": "outputmaxsize",
    "disable_redirects": "disableredirects", "alias_service": "aliasservice",
    "alias_node": "aliasnode", "os_service": "osservice", "h2ping": "h2ping",
}
_SERVICE_FIELDS = {
    "id", "name", "tags", "address", "taggedaddresses", "meta", "port", "kind", "proxy",
    "connect", "check", "checks", "enabletagoverride", "weights", "namespace", "partition",
    "socketpath", "locality",
}
_CHECK_FIELDS = {
    "checkid", "id", "name", "status", "notes", "serviceid", "ttl", "http", "interval",
    "timeout", "method", "header", "body", "tlsskipverify", "tlsservername",
    "disableredirects", "tcp", "udp", "grpc", "grpcusetls", "h2ping", "h2pingusetls", "args",
    "aliasservice", "aliasnode", "osservice", "dockercontainerid", "shell",
    "deregistercriticalserviceafter", "successbeforepassing", "failuresbeforewarning",
    "failuresbeforecritical", "outputmaxsize", "namespace", "partition", "type",
}
_SESSION_FIELDS = {
    "id", "name", "node", "checks", "nodechecks", "servicechecks", "lockdelay", "behavior",
    "ttl", "namespace", "partition",
}


def _norm(obj, allowed: set[str], what: str = "") -> dict:
    """Case-insensitive, strict decoding (§15): returns ``{lowercase_key: value}``."""
    if not isinstance(obj, dict):
        raise HTTPError(400, f"Request decode failed: json: cannot unmarshal {type(obj).__name__} into Go value")
    out = {}
    for k, v in obj.items():
        key = _ALIASES.get(k.lower(), k.lower())
        if key not in allowed:
            raise HTTPError(400, f'Request decode failed: json: unknown field "{k}"')
        out[key] = v
    return out


def _duration(value, what: str) -> float:
    """Durations in check and session bodies may be Go strings or ns numbers (§15)."""
    if value in (None, ""):
        return 0.0
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value / 1e9
    if isinstance(value, str):
        try:
            return parse_go_duration(value)
        except ValueError as e:
            raise HTTPError(400, f"Request decode failed: {what}: {e}")
    raise HTTPError(400, f"Request decode failed: {what}: invalid duration")


def _flag(request, name: str) -> bool:
    """Presence flags (``?recurse``, ``?keys``, ``?passing``...)."""
    return name in request.args


class _Check:
    def __init__(self, d: dict, check_id: str, service: dict | None):
        self.id = check_id
        self.name = d.get("name") or (f"Service '{service['Service']}' check" if service else check_id)
        self.service_id = service["ID"] if service else ""
        self.service_name = service["Service"] if service else ""
        self.notes = d.get("notes") or ""
        self.ttl = _duration(d.get("ttl"), "TTL")
        self.http = d.get("http") or ""
        self.tcp = d.get("tcp") or ""
        self.method = d.get("method") or "GET"
        self.header = d.get("header") or {}
        self.body = d.get("body") or ""
        self.interval = _duration(d.get("interval"), "Interval")
        self.timeout = _duration(d.get("timeout"), "Timeout") or 10.0
        self.deregister_after = _duration(d.get("deregistercriticalserviceafter"), "DeregisterCriticalServiceAfter")
        self.success_before_passing = int(d.get("successbeforepassing") or 0)
        self.failures_before_critical = int(d.get("failuresbeforecritical") or 0)
        self.output_max = int(d.get("outputmaxsize") or 4096)
        if self.interval and self.ttl:
            raise HTTPError(400, "Invalid check: Interval and TTL cannot both be set")
        if (self.http or self.tcp or d.get("args") or d.get("grpc")) and self.interval <= 0:
            raise HTTPError(400, "Invalid check: Interval must be > 0 for Script, HTTP, H2PING, TCP or UDP checks")
        if "ttl" in d and self.ttl <= 0 and not self.interval:
            raise HTTPError(400, "Invalid check: TTL must be > 0 for TTL checks")
        status = d.get("status") or CRITICAL
        if status not in _STATUSES:
            raise HTTPError(400, f"Status for checks must 'passing', 'warning', 'critical'")
        self.status = status
        self.output = ""
        self.critical_since = time.monotonic() if status == CRITICAL else None
        self.ttl_deadline = time.monotonic() + self.ttl if self.ttl else None
        self.next_probe = time.monotonic()
        self.probing = False
        self.successes = 0
        self.failures = 0
        self.create_index = 0
        self.modify_index = 0

    @property
    def type(self) -> str:
        if self.ttl:
            return "ttl"
        if self.http:
            return "http"
        if self.tcp:
            return "tcp"
        return "script"

    def view(self, node: str, service: dict | None) -> dict:
        return {
            "Node": node, "CheckID": self.id, "Name": self.name, "Status": self.status,
            "Notes": self.notes, "Output": self.output, "ServiceID": self.service_id,
            "ServiceName": self.service_name,
            "ServiceTags": list(service["Tags"]) if service else [],
            "Type": self.type, "Interval": format_go_duration(self.interval) if self.interval else "",
            "Timeout": format_go_duration(self.timeout) if self.interval else "",
            "ExposedPort": 0, "Definition": {}, "CreateIndex": self.create_index,
            "ModifyIndex": self.modify_index,
        }


class ConsulDouble(BlockingQueries):
    """In-memory Consul with an HTTP face. ``url`` is where clients connect.

    Knobs that real Consul hard-codes are constructor arguments so tests stay short; their
    defaults are the real values: ``min_deregister_after`` (1 min, §16), ``reap_interval``
    (30 s, §16), ``min_session_ttl`` (10 s, §20), ``session_ttl_multiplier`` (2, §20: reaping
    may take up to 2×TTL), ``max_wait`` (10 min, §21).
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, node: str = "consul-node-1",
                 node_address: str = "127.0.0.1", datacenter: str = "dc1",
                 min_deregister_after: float = 60.0, reap_interval: float = 30.0,
                 min_session_ttl: float = 10.0, session_ttl_multiplier: float = 2.0,
                 max_wait: float = 600.0, tick: float = 0.02, acl_tokens=None, probe_stagger: bool = True,
                 anonymous_rules: str = ""):
        self.datacenter = datacenter
        #: The agent runs an HTTP/TCP check for the first time after a random pause of up to its
        #: interval (agent/checks/check.go CheckHTTP.run / CheckTCP.run: lib.RandomStagger(c.Interval)),
        #: also after an agent restart. False: the first probe runs at once.
        self.probe_stagger = probe_stagger
        #: None: ACLs off. A collection of SecretIDs: ACLs on, default deny, those tokens allowed.
        self.acl_tokens = None
        if acl_tokens is not None:
            tokens = acl_tokens if isinstance(acl_tokens, dict) else {t: None for t in acl_tokens}
            self.acl_tokens = {t: ConsulAuthorizer(rules) for t, rules in tokens.items()}
        self.anonymous = ConsulAuthorizer(anonymous_rules)
        self.min_deregister_after = min_deregister_after
        self.reap_interval = reap_interval
        self.min_session_ttl = min_session_ttl
        self.session_ttl_multiplier = session_ttl_multiplier
        self.max_wait = max_wait
        self._tick = tick
        self._cond = threading.Condition()
        self.blocked_queries = 0  # requests waiting in a blocking query right now
        self._gen = 0  # bumped when the server goes down: cuts blocking queries in flight
        self.default_node = node
        self._reset_state(node, node_address)
        self.requests: list[tuple[str, str]] = []  # (method, path) log, for tests of clients
        self.request_tokens: list[tuple[str, str, str]] = []  # (method, path, token or ""), same order
        self._app = self._build_app()
        self.server = DoubleServer(self._app, host, port)
        self._stop = threading.Event()
        self._ticker = None

    # ------------------------------------------------------------------ lifecycle
    def _reset_state(self, node: str, node_address: str) -> None:
        self.index = 1
        self.nodes = {node: {"ID": str(uuid.uuid4()), "Node": node, "Address": node_address,
                             "Datacenter": self.datacenter,
                             "TaggedAddresses": {"lan": node_address, "lan_ipv4": node_address,
                                                 "wan": node_address, "wan_ipv4": node_address},
                             "Meta": {"consul-network-segment": ""},
                             "CreateIndex": 1, "ModifyIndex": 1}}
        self.node_health: dict[str, str] = {}  # node -> serfHealth status (default passing)
        self.services: dict[str, dict] = {}
        self.checks: dict[str, _Check] = {}
        self.kv: dict[str, dict] = {}
        self.kv_tombstones: dict[str, int] = {}
        self.kv_table_index = 1
        self.lock_delays: dict[str, float] = {}
        self.sessions: dict[str, dict] = {}
        self.session_deadlines: dict[str, float] = {}
        self.sessions_index = 1
        self.service_index: dict[str, int] = {}
        self.catalog_index = 1
        self._last_reap = time.monotonic()

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def host(self) -> str:
        return self.server.host

    @property
    def port(self) -> int:
        return self.server.port

    def start(self) -> "ConsulDouble":
        self.server.up()
        if self._ticker is None:
            self._ticker = threading.Thread(target=self._tick_loop, daemon=True, name="consul-double-ticker")
            self._ticker.start()
        return self

    def close(self) -> None:
        self._stop.set()
        self.down()
        if self._ticker is not None:
            self._ticker.join()

    def down(self) -> None:
        """Consul outage: connections are refused and blocking queries in flight are cut."""
        with self._cond:
            self._gen += 1
            self._cond.notify_all()
        self.server.down()

    def up(self) -> None:
        self.server.up()

    def restart(self, lose: str = "none") -> None:
        """Stop serving, then serve again on the same port.

        ``lose="none"``: a normal agent restart; services, checks, KV and sessions survive (the
        agent persists its local services, the servers keep KV and sessions), interval checks
        go back to ``critical`` until probed again. ``lose="agent"``: an agent without persisted
        state: its services and checks are gone, KV and sessions stay. ``lose="all"``: a dev-mode
        agent; everything is gone and the index starts again low, so clients see it go backwards
        (§21 client rule: reset to 0).
        """
        self.down()
        with self._cond:
            if lose == "all":
                addr = self.nodes[self.default_node]["Address"]
                self._reset_state(self.default_node, addr)
            elif lose == "agent":
                for sid in list(self.services):
                    self._deregister_service(sid)
            else:
                now = time.monotonic()
                for c in self.checks.values():
                    if c.http or c.tcp:
                        c.next_probe = self._first_probe(c, now)
                        self._set_status(c, CRITICAL, c.output)
            self._cond.notify_all()
        self.up()

    def _first_probe(self, c: "_Check", now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        return now + (random.uniform(0, c.interval) if self.probe_stagger else 0.0)

    # ------------------------------------------------------------------ index helpers
    def _bump(self) -> int:
        self.index += 1
        self._cond.notify_all()
        return self.index

    def _touch_service(self, name: str) -> int:
        idx = self._bump()
        self.service_index[name] = idx
        return idx

    def _block_token(self):
        """A blocking query in flight is cut when the double goes down (its generation changes)."""
        return self._gen

    def _wait_index(self, want, index_fn, deadline, gen) -> None:
        while want > 0 and index_fn() <= want:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self._cond.wait(left)
            if self._gen != gen:
                raise ConnectionAbortedError("consul double went down")

    def _headers(self, index: int) -> dict:
        return {"X-Consul-Index": str(index), "X-Consul-KnownLeader": "true",
                "X-Consul-LastContact": "0", "X-Consul-Effective-Consistency": "leader"}

    # ------------------------------------------------------------------ agent: services & checks
    def register_service(self, body: dict, node: str | None = None, address: str | None = None,
                         replace_existing_checks: bool = False) -> dict:
        """Agent service register (§16). Also the in-process entry point the Nomad double
        uses: ``node``/``address`` place the service on another (fake) agent's node."""
        with self._cond:
            return self._register_service(body, node, address, replace_existing_checks)

    def _register_service(self, body, node, address, replace_existing_checks):
        d = _norm(body, _SERVICE_FIELDS)
        name = d.get("name") or ""
        if not name:
            raise HTTPError(400, "Missing service name")
        sid = d.get("id") or name
        addr = d.get("address") or ""
        if addr in ("0.0.0.0", "::", "[::]"):
            raise HTTPError(400, "Invalid service address")
        meta = d.get("meta") or {}
        if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
            raise HTTPError(400, "Invalid Service Meta: values must be strings")
        tagged = d.get("taggedaddresses") or {}
        for k, v in tagged.items():
            if not isinstance(v, dict):
                raise HTTPError(400, f"Request decode failed: json: cannot unmarshal string into Go struct field TaggedAddresses of type structs.ServiceAddress")
        weights = d.get("weights") or {"Passing": 1, "Warning": 1}
        node = node or self.default_node
        if node not in self.nodes:
            self.nodes[node] = {"ID": str(uuid.uuid4()), "Node": node, "Address": address or "127.0.0.1",
                                "Datacenter": self.datacenter,
                                "TaggedAddresses": {"lan": address or "127.0.0.1"},
                                "Meta": {}, "CreateIndex": self.index, "ModifyIndex": self.index}
        check_defs = []
        if d.get("check"):
            check_defs.append(d["check"])
        check_defs.extend(d.get("checks") or [])
        normalized = [_norm(c, _CHECK_FIELDS) for c in check_defs]
        prev = self.services.get(sid)
        if prev and prev["Service"] != name:
            self.service_index[prev["Service"]] = self.index + 1
        svc = {
            "ID": sid, "Service": name, "Tags": list(d.get("tags") or []), "Address": addr,
            "TaggedAddresses": tagged, "Meta": meta, "Port": int(d.get("port") or 0),
            "Weights": {"Passing": weights.get("Passing", weights.get("passing", 1)),
                        "Warning": weights.get("Warning", weights.get("warning", 1))},
            "EnableTagOverride": bool(d.get("enabletagoverride") or False),
            "Kind": d.get("kind") or "", "Datacenter": self.datacenter, "_node": node,
            "CreateIndex": prev["CreateIndex"] if prev else 0, "ModifyIndex": 0,
        }
        # Build the checks before committing anything, so a bad check rejects the whole call.
        new_checks = []
        for i, cd in enumerate(normalized):
            cid = cd.get("checkid") or cd.get("id")
            if not cid:
                cid = f"service:{sid}" if len(normalized) == 1 else f"service:{sid}:{i + 1}"
            new_checks.append(_Check(cd, cid, svc))
        idx = self._touch_service(name)
        self.catalog_index = idx
        svc["ModifyIndex"] = idx
        if not svc["CreateIndex"]:
            svc["CreateIndex"] = idx
        self.services[sid] = svc
        keep_ids = {c.id for c in new_checks}
        if replace_existing_checks:
            for cid, c in list(self.checks.items()):
                if c.service_id == sid and cid not in keep_ids:
                    self._remove_check(cid)
        for c in new_checks:
            old = self.checks.get(c.id)
            if old is not None:
                # A re-register keeps status and output of unchanged check IDs (§16).
                c.status, c.output, c.critical_since = old.status, old.output, old.critical_since
                c.create_index = old.create_index
            else:
                c.create_index = idx
            if c.http or c.tcp:
                c.next_probe = self._first_probe(c)
            c.modify_index = idx
            self.checks[c.id] = c
        return svc

    def deregister_service(self, service_id: str) -> None:
        with self._cond:
            if service_id not in self.services:
                raise HTTPError(404, f'Unknown service ID "{service_id}". Ensure that the service ID is passed, not the service name.')
            self._deregister_service(service_id)

    def _deregister_service(self, service_id: str) -> None:
        svc = self.services.pop(service_id)
        for cid, c in list(self.checks.items()):
            if c.service_id == service_id:
                self._remove_check(cid)
        self.catalog_index = self._touch_service(svc["Service"])

    def _remove_check(self, cid: str) -> None:
        self.checks.pop(cid, None)
        # A session bound to a removed check is invalidated (§20).
        for sid, s in list(self.sessions.items()):
            if cid in s["NodeChecks"] or cid in [c["ID"] for c in s["ServiceChecks"]]:
                self._invalidate_session(sid)

    def _set_status(self, c: _Check, status: str, output: str) -> None:
        if len(output) > c.output_max:
            output = output[:c.output_max] + f" ... (captured {c.output_max} of {len(output)} bytes)"
        c.output = output
        if status == c.status:
            return
        c.status = status
        c.critical_since = time.monotonic() if status == CRITICAL else None
        svc = self.services.get(c.service_id)
        idx = self._touch_service(svc["Service"]) if svc else self._bump()
        c.modify_index = idx
        if status == CRITICAL:
            for sid, s in list(self.sessions.items()):
                if c.id in s["NodeChecks"] or c.id in [x["ID"] for x in s["ServiceChecks"]]:
                    self._invalidate_session(sid)

    def set_node_health(self, node: str, status: str) -> None:
        """serfHealth of a node (a host that died or came back). Critical also invalidates the
        sessions bound to it (§20: the default NodeChecks is serfHealth)."""
        with self._cond:
            if node not in self.nodes:
                self.nodes[node] = {"ID": str(uuid.uuid4()), "Node": node, "Address": "127.0.0.1",
                                    "Datacenter": self.datacenter, "TaggedAddresses": {"lan": "127.0.0.1"},
                                    "Meta": {}, "CreateIndex": self.index, "ModifyIndex": self.index}
            self.node_health[node] = status
            names = {s["Service"] for s in self.services.values() if s["_node"] == node}
            for name in names:
                self._touch_service(name)
            self._bump()
            if status == CRITICAL:
                for sid, sess in list(self.sessions.items()):
                    if sess["Node"] == node and "serfHealth" in sess["NodeChecks"]:
                        self._invalidate_session(sid)

    def update_ttl(self, check_id: str, status: str, output: str = "") -> None:
        """pass/warn/fail/update of a TTL check (§17); also resets the TTL timer."""
        with self._cond:
            c = self.checks.get(check_id)
            if c is None:
                raise HTTPError(404, f'Unknown check ID "{check_id}". Ensure that the check ID is passed, not the check name.')
            if not c.ttl:
                raise HTTPError(500, f'CheckID "{check_id}" does not have associated TTL')
            c.ttl_deadline = time.monotonic() + c.ttl
            self._set_status(c, status, output)

    # ------------------------------------------------------------------ background work
    def _tick_loop(self) -> None:
        while not self._stop.wait(self._tick):
            now = time.monotonic()
            probes = []
            with self._cond:
                for c in list(self.checks.values()):
                    if c.ttl and c.ttl_deadline is not None and now >= c.ttl_deadline:
                        c.ttl_deadline = None
                        out = "TTL expired"
                        if c.output and not c.output.startswith("TTL expired"):
                            out = f"TTL expired (last output before timeout follows): {c.output}"
                        self._set_status(c, CRITICAL, out)
                    elif (c.http or c.tcp) and not c.probing and now >= c.next_probe:
                        c.probing = True
                        c.next_probe = now + c.interval
                        probes.append(c)
                for sid, deadline in list(self.session_deadlines.items()):
                    if now >= deadline:
                        self._invalidate_session(sid)
                if now - self._last_reap >= self.reap_interval:
                    self._last_reap = now
                    self._reap(now)
            for c in probes:
                threading.Thread(target=self._probe, args=(c,), daemon=True).start()

    def _reap(self, now: float) -> None:
        """DeregisterCriticalServiceAfter (§16): min 1 min, reaper pass every 30 s."""
        for c in list(self.checks.values()):
            if c.deregister_after and c.status == CRITICAL and c.critical_since is not None:
                after = max(c.deregister_after, self.min_deregister_after)
                if now - c.critical_since >= after and c.service_id in self.services:
                    self._deregister_service(c.service_id)

    def _probe(self, c: _Check) -> None:
        try:
            if c.http:
                try:
                    headers = {"User-Agent": "Consul Health Check", "Accept": "text/plain, text/*, */*"}
                    headers.update({k: (v[0] if isinstance(v, list) else v) for k, v in c.header.items()})
                    r = requests.request(c.method, c.http, timeout=c.timeout, data=c.body or None,
                                         headers=headers)
                    body = r.text[:c.output_max]
                    out = f"HTTP {c.method} {c.http}: {r.status_code} {r.reason} Output: {body}"
                    if 200 <= r.status_code < 300:
                        status = PASSING
                    elif r.status_code == 429:
                        status = WARNING
                    else:
                        status = CRITICAL
                except requests.RequestException as e:
                    status, out = CRITICAL, f"Get \"{c.http}\": {e}"
            else:
                import socket
                host, _, port = c.tcp.rpartition(":")
                try:
                    with socket.create_connection((host.strip("[]"), int(port)), timeout=c.timeout):
                        pass
                    status, out = PASSING, f"TCP connect {c.tcp}: Success"
                except OSError as e:
                    status, out = CRITICAL, f"dial tcp {c.tcp}: {e}"
            with self._cond:
                if self.checks.get(c.id) is not c:
                    return
                if status == PASSING:
                    c.successes += 1
                    c.failures = 0
                    if c.successes < c.success_before_passing:
                        status = c.status
                else:
                    c.failures += 1
                    c.successes = 0
                    if c.failures < c.failures_before_critical:
                        status = c.status
                self._set_status(c, status, out)
        finally:
            c.probing = False

    # ------------------------------------------------------------------ sessions
    def _invalidate_session(self, sid: str) -> None:
        s = self.sessions.pop(sid, None)
        self.session_deadlines.pop(sid, None)
        if s is None:
            return
        idx = self._bump()
        self.sessions_index = idx
        until = time.monotonic() + s["LockDelay"] / 1e9
        for key, e in list(self.kv.items()):
            if e.get("Session") == sid:
                if s["Behavior"] == "delete":
                    del self.kv[key]
                    self.kv_tombstones[key] = idx
                else:
                    e.pop("Session", None)
                    e["ModifyIndex"] = idx
                if s["LockDelay"]:
                    self.lock_delays[key] = until
                self.kv_table_index = idx

    # ------------------------------------------------------------------ views
    def _health_entries(self, name: str, passing: bool, tags: list[str]) -> list[dict]:
        out = []
        for svc in sorted(self.services.values(), key=lambda s: (s["_node"], s["ID"])):
            if svc["Service"] != name:
                continue
            if tags and not all(t in svc["Tags"] for t in tags):
                continue
            node = self.nodes[svc["_node"]]
            serf = self.node_health.get(node["Node"], PASSING)
            checks = [{"Node": node["Node"], "CheckID": "serfHealth", "Name": "Serf Health Status",
                       "Status": serf, "Notes": "",
                       "Output": "Agent alive and reachable" if serf == PASSING else "Agent not live or unreachable",
                       "ServiceID": "", "ServiceName": "", "ServiceTags": [], "Type": "",
                       "Interval": "", "Timeout": "", "ExposedPort": 0, "Definition": {},
                       "CreateIndex": node["CreateIndex"], "ModifyIndex": node["CreateIndex"]}]
            checks += [c.view(node["Node"], svc) for c in self.checks.values() if c.service_id == svc["ID"]]
            if passing and any(c["Status"] != PASSING for c in checks):
                continue
            out.append({"Node": dict(node), "Service": self._service_view(svc), "Checks": checks})
        return out

    @staticmethod
    def _service_view(svc: dict) -> dict:
        return {k: v for k, v in svc.items() if not k.startswith("_")}

    def wait_for(self, predicate, timeout: float = 30.0, what: str = "condition"):
        """Waits on the state's condition variable until ``predicate()`` is truthy (returned);
        ``TimeoutError`` at the deadline."""
        deadline = time.monotonic() + timeout
        while True:
            # The predicate runs without the lock, so it may call the double over HTTP.
            v = predicate()
            if v:
                return v
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"timed out waiting for {what}")
            with self._cond:
                self._cond.wait(min(left, 0.2))

    def check_status(self, check_id: str) -> str | None:
        with self._cond:
            c = self.checks.get(check_id)
            return c.status if c else None

    # Convenience reads for tests (no HTTP).
    def passing_instances(self, name: str) -> list[dict]:
        with self._cond:
            return [e["Service"] for e in self._health_entries(name, True, [])]

    # ------------------------------------------------------------------ HTTP routes
    def _build_app(self) -> App:
        app = App()
        double = self

        def body_json(request, required=True):
            raw = request.get_data()
            if not raw.strip():
                if required:
                    raise HTTPError(400, "Request decode failed: EOF")
                return {}
            try:
                return json.loads(raw)
            except ValueError as e:
                raise HTTPError(400, f"Request decode failed: {e}")

        def request_token(request) -> str:
            """The token a request carries (§15): X-Consul-Token, else a Bearer header, else ?token=."""
            token = request.headers.get("X-Consul-Token", "")
            auth = request.headers.get("Authorization", "")
            if not token and auth.lower().startswith("bearer "):
                token = auth[7:].strip()
            return token or request.args.get("token", "")

        def decorate(request, response):
            double.requests.append((request.method, request.path))
            double.request_tokens.append((request.method, request.path, request_token(request)))
            response.headers["X-Consul-Default-ACL-Policy"] = "allow" if double.acl_tokens is None else "deny"
            return response
        app.decorate = decorate

        def authorize(request):
            """Resolve the request's token (anonymous without one); the routes check the rights."""
            request.environ["acl.authz"] = None
            if double.acl_tokens is None or request.path == "/v1/status/leader":
                return
            token = request_token(request)
            request.environ["acl.token"] = token
            if not token:
                request.environ["acl.authz"] = double.anonymous
            elif token not in double.acl_tokens:
                raise HTTPError(403, "ACL not found")
            else:
                request.environ["acl.authz"] = double.acl_tokens[token]
        app.authorize = authorize

        def can(request, kind, name, access) -> bool:
            authz = request.environ.get("acl.authz")
            return authz is None or authz.allows(kind, name, access)

        def need(request, kind, name, access) -> None:
            if not can(request, kind, name, access):
                # acl/errors.go PermissionDeniedError
                who = ("anonymous token" if not request.environ.get("acl.token")
                       else "token with AccessorID '00000000-0000-0000-0000-000000000000'")
                raise HTTPError(403, f"Permission denied: {who} lacks permission '{kind}:{access}' on \"{name}\"")

        def filtered(request, headers: dict, dropped: bool) -> dict:
            if dropped and request.environ.get("acl.token"):
                headers = {**headers, "X-Consul-Results-Filtered-By-ACLs": "true"}
            return headers

        @app.route(["GET"], "/v1/status/leader")
        def leader(request):
            return as_json("127.0.0.1:8300")

        @app.route(["GET"], "/v1/agent/self")
        def agent_self(request):
            with double._cond:
                node = double.nodes[double.default_node]
            return as_json({"Config": {"Datacenter": double.datacenter, "NodeName": node["Node"],
                                       "NodeID": node["ID"], "Server": True, "Version": "1.20.0",
                                       "PrimaryDatacenter": double.datacenter},
                            "Member": {"Name": node["Node"], "Addr": node["Address"], "Port": 8301,
                                       "Status": 1, "Tags": {"role": "consul", "dc": double.datacenter}},
                            "Meta": {"consul-network-segment": ""}})

        @app.route(["PUT"], "/v1/agent/service/register")
        def svc_register(request):
            replace = request.args.get("replace-existing-checks")
            body = body_json(request)
            need(request, "service", str(next((v for k, v in body.items() if k.lower() == "name"), "")), "write")
            double.register_service(body,
                                    replace_existing_checks=replace is not None and replace.lower() not in ("false", "0"))
            return text(200, "")

        @app.route(["PUT"], "/v1/agent/service/deregister/(.+)")
        def svc_deregister(request, sid):
            with double._cond:
                svc = double.services.get(unquote(sid))
            if svc is not None:
                need(request, "service", svc["Service"], "write")
            double.deregister_service(unquote(sid))
            return text(200, "")

        @app.route(["GET"], "/v1/agent/services")
        def agent_services(request):
            with double._cond:
                return as_json({sid: double._service_view(s) for sid, s in double.services.items()
                                if can(request, "service", s["Service"], "read")})

        @app.route(["GET"], "/v1/agent/checks")
        def agent_checks(request):
            with double._cond:
                return as_json({cid: c.view(double.services.get(c.service_id, {}).get("_node", double.default_node),
                                            double.services.get(c.service_id))
                                for cid, c in double.checks.items()})

        @app.route(["GET"], "/v1/agent/health/service/(id|name)/(.+)")
        def agent_health(request, by, value):
            with double._cond:
                svcs = [s for s in double.services.values()
                        if (s["ID"] if by == "id" else s["Service"]) == value]
                if not svcs:
                    raise HTTPError(404, f"ServiceId {value} not found" if by == "id" else f"ServiceName {value} Not Found")
                statuses = [c.status for c in double.checks.values() if c.service_id in {s["ID"] for s in svcs}]
            agg = CRITICAL if CRITICAL in statuses else WARNING if WARNING in statuses else PASSING
            code = {PASSING: 200, WARNING: 429, CRITICAL: 503}[agg]
            if request.args.get("format") == "text":
                return text(code, agg)
            return as_json({"AggregatedStatus": agg, "Service": double._service_view(svcs[0])}, status=code)

        @app.route(["PUT"], "/v1/agent/check/register")
        def check_register(request):
            d = _norm(body_json(request), _CHECK_FIELDS)
            if not d.get("name"):
                raise HTTPError(400, "Missing check name")
            with double._cond:
                svc = None
                if d.get("serviceid"):
                    svc = double.services.get(d["serviceid"])
                    if svc is None:
                        raise HTTPError(404, f'ServiceID "{d["serviceid"]}" does not exist')
                c = _Check(d, d.get("id") or d["name"], svc)
                old = double.checks.get(c.id)
                if old is not None:
                    c.status, c.output, c.critical_since = old.status, old.output, old.critical_since
                idx = double._touch_service(svc["Service"]) if svc else double._bump()
                c.create_index = old.create_index if old else idx
                c.modify_index = idx
                double.checks[c.id] = c
            return text(200, "")

        @app.route(["PUT"], "/v1/agent/check/deregister/(.+)")
        def check_deregister(request, cid):
            cid = unquote(cid)
            with double._cond:
                c = double.checks.get(cid)
                if c is None:
                    raise HTTPError(404, f'Unknown check ID "{cid}". Ensure that the check ID is passed, not the check name.')
                double._remove_check(cid)
                svc = double.services.get(c.service_id)
                if svc:
                    double._touch_service(svc["Service"])
                else:
                    double._bump()
            return text(200, "")

        @app.route(["PUT"], "/v1/agent/check/(pass|warn|fail)/(.+)")
        def check_ttl(request, verb, cid):
            status = {"pass": PASSING, "warn": WARNING, "fail": CRITICAL}[verb]
            with double._cond:
                c = double.checks.get(unquote(cid))
            if c is not None:
                need(request, "service", c.service_name, "write") if c.service_name else \
                    need(request, "node", double.default_node, "write")
            double.update_ttl(unquote(cid), status, request.args.get("note", ""))
            return text(200, "")

        @app.route(["PUT"], "/v1/agent/check/update/(.+)")
        def check_update(request, cid):
            d = _norm(body_json(request), {"status", "output"})
            status = d.get("status", "")
            if status not in _STATUSES:
                raise HTTPError(400, f"Invalid check status: '{status}'")
            double.update_ttl(unquote(cid), status, d.get("output") or "")
            return text(200, "")

        @app.route(["GET"], "/v1/health/service/(.+)")
        def health_service(request, name):
            name = unquote(name)
            passing = False
            if "passing" in request.args:
                v = request.args.get("passing", "").lower()
                if v in ("", "1", "true", "t"):
                    passing = True
                elif v in ("0", "false", "f"):
                    passing = False
                else:
                    raise HTTPError(400, "Invalid value for ?passing")
            tags = request.args.getlist("tag")
            idx = double._block(request, lambda: double.service_index.get(name, double.catalog_index))
            with double._cond:
                entries = double._health_entries(name, passing, tags)
            if not can(request, "service", name, "read"):
                kept = []
            else:
                kept = [e for e in entries if can(request, "node", e["Node"]["Node"], "read")]
            return as_json(kept, headers=filtered(request, double._headers(idx), len(kept) < len(entries)))

        @app.route(["GET"], "/v1/catalog/services")
        def catalog_services(request):
            idx = double._block(request, lambda: double.catalog_index)
            with double._cond:
                out: dict[str, list] = {"consul": []}
                for s in double.services.values():
                    tags = out.setdefault(s["Service"], [])
                    for t in s["Tags"]:
                        if t not in tags:
                            tags.append(t)
            kept = {k: v for k, v in out.items() if can(request, "service", k, "read")}
            return as_json(kept, headers=filtered(request, double._headers(idx), len(kept) < len(out)))

        @app.route(["GET"], "/v1/catalog/service/(.+)")
        def catalog_service(request, name):
            name = unquote(name)
            tags = request.args.getlist("tag")
            idx = double._block(request, lambda: double.service_index.get(name, double.catalog_index))
            with double._cond:
                out = []
                for s in double.services.values():
                    if s["Service"] != name or (tags and not all(t in s["Tags"] for t in tags)):
                        continue
                    n = double.nodes[s["_node"]]
                    out.append({"ID": n["ID"], "Node": n["Node"], "Address": n["Address"],
                                "Datacenter": double.datacenter, "TaggedAddresses": n["TaggedAddresses"],
                                "NodeMeta": n["Meta"], "ServiceKind": s["Kind"], "ServiceID": s["ID"],
                                "ServiceName": s["Service"], "ServiceTags": s["Tags"],
                                "ServiceAddress": s["Address"], "ServicePort": s["Port"],
                                "ServiceMeta": s["Meta"], "ServiceWeights": s["Weights"],
                                "ServiceEnableTagOverride": s["EnableTagOverride"],
                                "ServiceTaggedAddresses": s["TaggedAddresses"],
                                "CreateIndex": s["CreateIndex"], "ModifyIndex": s["ModifyIndex"]})
            kept = [e for e in out if can(request, "service", name, "read") and can(request, "node", e["Node"], "read")]
            return as_json(kept, headers=filtered(request, double._headers(idx), len(kept) < len(out)))

        # -------------------------------------------------------------- KV (§19)
        def kv_view(e):
            out = {"Key": e["Key"], "Value": base64.b64encode(e["Value"]).decode() if e["Value"] is not None else None,
                   "Flags": e["Flags"], "CreateIndex": e["CreateIndex"], "ModifyIndex": e["ModifyIndex"],
                   "LockIndex": e["LockIndex"]}
            if e.get("Session"):
                out["Session"] = e["Session"]
            return out

        def prefix_index(prefix):
            idxs = [e["ModifyIndex"] for k, e in double.kv.items() if k.startswith(prefix)]
            idxs += [i for k, i in double.kv_tombstones.items() if k.startswith(prefix)]
            return max(idxs) if idxs else double.kv_table_index

        @app.route(["GET", "PUT", "DELETE"], "/v1/kv/(.*)")
        def kv(request, key):
            key = unquote(key)
            if request.method == "GET" and not (_flag(request, "recurse") or _flag(request, "keys")):
                need(request, "key", key, "read")
            elif request.method != "GET":
                if _flag(request, "recurse") and request.method == "DELETE":
                    authz = request.environ.get("acl.authz")
                    if authz is not None and not authz.allows_prefix("key", key, "write"):
                        raise HTTPError(403, f"Permission denied: token lacks permission 'key:write' on \"{key}\"")
                else:
                    need(request, "key", key, "write")
            if request.method == "GET":
                if _flag(request, "recurse") or _flag(request, "keys"):
                    idx = double._block(request, lambda: prefix_index(key))
                else:
                    idx = double._block(request, lambda: double.kv[key]["ModifyIndex"] if key in double.kv
                                        else double.kv_tombstones.get(key, double.kv_table_index))
                h = double._headers(idx)
                with double._cond:
                    if _flag(request, "keys"):
                        sep = request.args.get("separator", "")
                        keys = []
                        for k in sorted(double.kv):
                            if not k.startswith(key):
                                continue
                            if sep:
                                rest = k[len(key):]
                                pos = rest.find(sep)
                                if pos >= 0:
                                    k = key + rest[:pos + len(sep)]
                            if k not in keys:
                                keys.append(k)
                        kept = [k for k in keys if can(request, "key", k, "list")]
                        if not kept:
                            return text(404, "", headers=h)
                        return as_json(kept, headers=filtered(request, h, len(kept) < len(keys)))
                    if _flag(request, "recurse"):
                        items = [kv_view(double.kv[k]) for k in sorted(double.kv) if k.startswith(key)]
                        kept = [i for i in items if can(request, "key", i["Key"], "read")]
                        if not kept:
                            return text(404, "", headers=h)
                        return as_json(kept, headers=filtered(request, h, len(kept) < len(items)))
                    e = double.kv.get(key)
                    if e is None:
                        return text(404, "", headers=h)
                    if _flag(request, "raw"):
                        from werkzeug.wrappers import Response
                        return Response(e["Value"] or b"", headers=h, content_type="text/plain; charset=utf-8")
                    return as_json([kv_view(e)], headers=h)
            if request.method == "DELETE":
                with double._cond:
                    cas = request.args.get("cas")
                    if cas is not None:
                        try:
                            cas_i = int(cas)
                        except ValueError:
                            raise HTTPError(400, "Invalid CAS index")
                        e = double.kv.get(key)
                        if cas_i == 0 or e is None or e["ModifyIndex"] != cas_i:
                            return as_json(False)
                    if _flag(request, "recurse"):
                        victims = [k for k in double.kv if k.startswith(key)]
                    else:
                        victims = [key] if key in double.kv else []
                    idx = double._bump()
                    for k in victims:
                        del double.kv[k]
                        double.kv_tombstones[k] = idx
                    double.kv_table_index = idx
                    return as_json(True, headers={"X-Consul-Index": str(idx)})
            # PUT
            if not key:
                raise HTTPError(400, "Missing key name")
            flags_given = [f for f in ("cas", "acquire", "release") if f in request.args]
            if len(flags_given) > 1:
                raise HTTPError(400, "Conflicting flags: " + "&".join(f"{f}={request.args[f]}" for f in flags_given))
            value = request.get_data()
            if len(value) > 512 * 1024:
                raise HTTPError(413, f"Request body({len(value)} bytes) too large, max size: 524288 bytes. See https://developer.hashicorp.com/docs/agent/config/config-files#kv_max_value_size.")
            try:
                flags = int(request.args.get("flags", "0") or 0)
            except ValueError:
                raise HTTPError(400, "Invalid flags")
            with double._cond:
                e = double.kv.get(key)
                now = time.monotonic()
                if "cas" in request.args:
                    try:
                        cas_i = int(request.args["cas"])
                    except ValueError:
                        raise HTTPError(400, "Invalid CAS index")
                    if (cas_i == 0 and e is not None) or (cas_i != 0 and (e is None or e["ModifyIndex"] != cas_i)):
                        return as_json(False)
                session = None
                if "acquire" in request.args:
                    session = request.args["acquire"]
                    if session not in double.sessions:
                        raise HTTPError(500, f'invalid session "{session}"')
                    if e is not None and e.get("Session") and e["Session"] != session:
                        return as_json(False)
                    if (e is None or not e.get("Session")) and double.lock_delays.get(key, 0) > now:
                        return as_json(False)
                if "release" in request.args:
                    rel = request.args["release"]
                    if e is None or e.get("Session") != rel:
                        return as_json(False)
                idx = double._bump()
                new = {"Key": key, "Value": value, "Flags": flags,
                       "CreateIndex": e["CreateIndex"] if e else idx, "ModifyIndex": idx,
                       "LockIndex": e["LockIndex"] if e else 0}
                if e is not None and e.get("Session"):
                    new["Session"] = e["Session"]
                if session is not None:
                    if not (e is not None and e.get("Session") == session):
                        new["LockIndex"] += 1
                    new["Session"] = session
                if "release" in request.args:
                    new.pop("Session", None)
                double.kv[key] = new
                double.kv_tombstones.pop(key, None)
                double.kv_table_index = idx
                return as_json(True, headers={"X-Consul-Index": str(idx)})

        # -------------------------------------------------------------- sessions (§20)
        def session_view(s):
            return {k: v for k, v in s.items()}

        @app.route(["PUT"], "/v1/session/create")
        def session_create(request):
            d = _norm(body_json(request, required=False), _SESSION_FIELDS)
            behavior = d.get("behavior") or "release"
            if behavior not in ("release", "delete"):
                raise HTTPError(400, f"Invalid Behavior setting '{behavior}'")
            ttl_raw = d.get("ttl") or ""
            ttl = _duration(ttl_raw, "TTL") if ttl_raw else 0.0
            if ttl_raw and ttl != 0 and not (double.min_session_ttl <= ttl <= 86400):
                raise HTTPError(400, f"Invalid Session TTL '{ttl_raw}', must be between "
                                     f"[{format_go_duration(double.min_session_ttl)}=24h0m0s]")
            ld = d.get("lockdelay", 15 * 10**9)
            if isinstance(ld, str):
                lock_delay = _duration(ld, "LockDelay")
            else:
                lock_delay = float(ld) if ld < 1000 else ld / 1e9
            lock_delay = min(max(lock_delay, 0.0), 60.0)
            need(request, "session", d.get("node") or double.default_node, "write")
            with double._cond:
                node = d.get("node") or double.default_node
                if node not in double.nodes:
                    raise HTTPError(500, f"Missing node registration")
                if "checks" in d:
                    node_checks = list(d.get("checks") or [])
                else:
                    node_checks = list(d.get("nodechecks") if d.get("nodechecks") is not None else ["serfHealth"])
                service_checks = [{"ID": c.get("ID") or c.get("id"), "Namespace": ""} for c in (d.get("servicechecks") or [])]
                for cid in node_checks + [c["ID"] for c in service_checks]:
                    if cid == "serfHealth":
                        continue
                    c = double.checks.get(cid)
                    if c is None:
                        raise HTTPError(500, f"Missing check '{cid}' registration")
                    if c.status == CRITICAL:
                        raise HTTPError(500, f"Check '{cid}' is in critical state")
                sid = str(uuid.uuid4())
                idx = double._bump()
                double.sessions_index = idx
                double.sessions[sid] = {
                    "ID": sid, "Name": d.get("name") or "", "Node": node,
                    "LockDelay": int(lock_delay * 1e9), "Behavior": behavior,
                    "TTL": ttl_raw if isinstance(ttl_raw, str) else format_go_duration(ttl),
                    "NodeChecks": node_checks, "ServiceChecks": service_checks,
                    "CreateIndex": idx, "ModifyIndex": idx}
                if ttl:
                    double.session_deadlines[sid] = time.monotonic() + ttl * double.session_ttl_multiplier
                return as_json({"ID": sid}, headers={"X-Consul-Index": str(idx)})

        @app.route(["PUT"], "/v1/session/destroy/(.+)")
        def session_destroy(request, sid):
            s = double.sessions.get(unquote(sid))
            if s is not None:
                need(request, "session", s["Node"], "write")
            with double._cond:
                double._invalidate_session(unquote(sid))
            return as_json(True)

        @app.route(["PUT"], "/v1/session/renew/(.+)")
        def session_renew(request, sid):
            sid = unquote(sid)
            with double._cond:
                s = double.sessions.get(sid)
                if s is None:
                    raise HTTPError(404, f"Session id '{sid}' not found")
                need(request, "session", s["Node"], "write")
                if s["TTL"]:
                    ttl = parse_go_duration(s["TTL"])
                    double.session_deadlines[sid] = time.monotonic() + ttl * double.session_ttl_multiplier
                return as_json([session_view(s)], headers=double._headers(double.index))

        @app.route(["GET"], "/v1/session/info/(.+)")
        def session_info(request, sid):
            sid = unquote(sid)
            idx = double._block(request, lambda: double.sessions_index)
            with double._cond:
                s = double.sessions.get(sid)
                return as_json([session_view(s)] if s else [], headers=double._headers(idx))

        @app.route(["GET"], "/v1/session/list")
        def session_list(request):
            idx = double._block(request, lambda: double.sessions_index)
            with double._cond:
                return as_json([session_view(s) for s in double.sessions.values()], headers=double._headers(idx))

        @app.route(["GET"], "/v1/session/node/(.+)")
        def session_node(request, node):
            idx = double._block(request, lambda: double.sessions_index)
            with double._cond:
                return as_json([session_view(s) for s in double.sessions.values() if s["Node"] == unquote(node)],
                               headers=double._headers(idx))

        return app
