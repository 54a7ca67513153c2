"""Functions, their code versions and their triggers, over a MetadataStore and a BlobStore.

Invariants:
- Code is written before any metadata that points at it, so a reader never sees a version whose
  package is missing.
- Every upload makes a new immutable version; the function record points at the newest.
- Concurrent writers (two control planes in cluster mode) never lose an update: every record
  write is a check-and-set, retried on conflict after re-reading.
"""

from __future__ import annotations

import secrets as _secrets
import threading
import time
from urllib.parse import quote

from appliance.core import codepkg, handler_check, routing, trigger_policy
from appliance.core.errors import Conflict, FunctionNotFound, NotFound, RevisionConflict, ValidationError
from appliance.core.model import CodeVersion, FunctionConfig, FunctionRecord, Trigger, validate_name
from appliance.core.ports import BlobStore, MetadataStore, SecretBox
from appliance.core.triggers import RouteTable, normalise_method, parse_path, route_key
from appliance.core.versions import VersionStore

CAS_ATTEMPTS = 20


def _fkey(name: str) -> str:
    return f"functions/{name}"


def _vkey(name: str, version: int) -> str:
    return f"versions/{name}/{version:08d}"


def _tkey(key: str) -> str:
    return "triggers/" + quote(key, safe="")


def _kprefix(key: str) -> str:
    return "triggerkeys/" + quote(key, safe="") + "/"


class FunctionStore:
    """The control plane's view of functions. Reads are cached for ``cache_ttl_s`` seconds
    (cluster mode, where another control plane may write) and invalidated by local writes."""

    def __init__(self, meta: MetadataStore, blobs: BlobStore, limits: codepkg.Limits, *, cache_ttl_s: float = 1.0,
                 clock=time.monotonic, secrets: SecretBox | None = None):
        self.meta = meta
        #: Seals function secrets before they are stored (None: secrets cannot be stored).
        self.secrets = secrets
        self.blobs = blobs
        self.limits = limits
        self._ttl = cache_ttl_s
        self._clock = clock
        self._lock = threading.Lock()
        self._records: dict[str, tuple[float, FunctionRecord | None]] = {}
        self._routes: tuple[float, RouteTable] | None = None
        self._listeners = []
        #: Published versions and aliases (appliance/core/versions.py), kept in this store's metadata.
        self.published = VersionStore(self)

    # -- change notification -------------------------------------------------------------

    def on_change(self, callback) -> None:
        """``callback(name)`` after a local write to function ``name``."""
        self._listeners.append(callback)

    def _changed(self, name: str) -> None:
        with self._lock:
            self._records.pop(name, None)
            self._routes = None
        for cb in list(self._listeners):
            cb(name)

    # -- stored documents ------------------------------------------------------------------

    def _doc(self, record: FunctionRecord) -> dict:
        """The record as stored: its secrets sealed, never in the clear."""
        doc = record.to_doc()
        if record.config.secrets:
            if self.secrets is None:
                raise ValidationError("this appliance has no secrets key, so it cannot store secrets", field="secrets")
            doc["sealed_secrets"] = self.secrets.seal(record.config.secrets)
        return doc

    def _record(self, doc: dict, revision: int) -> FunctionRecord:
        sealed = doc.get("sealed_secrets")
        values = self.secrets.open(sealed) if sealed and self.secrets is not None else {}
        if sealed and self.secrets is None:
            raise ValidationError("the function has secrets but this appliance has no secrets key", field="secrets")
        return FunctionRecord.from_doc(doc, revision, values)

    # -- functions -----------------------------------------------------------------------

    def _check_layers(self, config: FunctionConfig) -> None:
        """Every layer version the function lists must exist (refused with 400 naming it)."""
        from appliance.core.layers import LayerStore
        LayerStore(self.meta, self.blobs, self.limits).check_refs(config.layers)

    def create(self, config: FunctionConfig) -> FunctionRecord:
        self._check_layers(config)
        now = time.time()
        record = FunctionRecord(config=config, created_at=now, updated_at=now)
        try:
            self.meta.put(_fkey(config.name), self._doc(record), expected_revision=0)
        except RevisionConflict:
            raise Conflict(f"function {config.name!r} already exists; update it with PUT or PATCH "
                           f"/v1/functions/{config.name}", field="name") from None
        self._changed(config.name)
        return self.get(config.name, fresh=True)

    def get(self, name: str, *, fresh: bool = False) -> FunctionRecord:
        record = self.find(name, fresh=fresh)
        if record is None:
            raise FunctionNotFound(f"function {name!r} does not exist")
        return record

    def find(self, name: str, *, fresh: bool = False) -> FunctionRecord | None:
        now = self._clock()
        if not fresh:
            with self._lock:
                hit = self._records.get(name)
            if hit and now - hit[0] < self._ttl:
                return hit[1]
        got = self.meta.get(_fkey(name))
        record = self._record(got[0], got[1]) if got else None
        with self._lock:
            self._records[name] = (now, record)
        return record

    def list(self) -> list[FunctionRecord]:
        return [self._record(doc, rev) for _, doc, rev in self.meta.list("functions/")]

    def update(self, name: str, data: dict) -> FunctionRecord:
        for _ in range(CAS_ATTEMPTS):
            current = self.get(name, fresh=True)
            config = FunctionConfig.from_request(data, base=current.config, name=name)
            if config.layers != current.config.layers:
                self._check_layers(config)
            new = FunctionRecord(config=config, version=current.version, digest=current.digest,
                                 created_at=current.created_at, updated_at=time.time(), routing=current.routing)
            try:
                self.meta.put(_fkey(name), self._doc(new), expected_revision=current.revision)
            except RevisionConflict:
                continue
            self._changed(name)
            return self.get(name, fresh=True)
        raise Conflict(f"function {name!r} is being changed concurrently; try again")

    def delete(self, name: str) -> FunctionRecord:
        record = self.get(name, fresh=True)
        for trigger in self.triggers(function=name):
            self._delete_trigger_records(route_key(trigger.method, trigger.path))
        versions = self.versions(name)
        for v in versions:
            self.meta.delete(_vkey(name, v.version))
        published = self.published.delete_all(name)
        self.meta.delete(_fkey(name))
        self._changed(name)
        self._collect_garbage({v.digest for v in versions} | published)
        return record

    def _collect_garbage(self, digests: set[str]) -> None:
        """Delete packages no remaining version refers to (packages are shared by digest)."""
        if not digests:
            return
        in_use = self.digests_in_use()
        for digest in digests - in_use:
            self.blobs.delete(digest)

    def digests_in_use(self) -> set[str]:
        """The packages some code version, published version or layer version refers to (layers share
        the blob store)."""
        in_use = {doc.get("digest") for _, doc, _ in self.meta.list("versions/")}
        in_use |= {doc.get("digest") for _, doc, _ in self.meta.list("published/")}
        return in_use | {doc.get("digest") for _, doc, _ in self.meta.list("layers/")}

    # -- code ----------------------------------------------------------------------------

    def upload_code(self, name: str, data: bytes, *, filename: str | None = None,
                    before_publish=None, prepare=None) -> tuple[FunctionRecord, CodeVersion, list[str]]:
        """Store a package and make it the function's newest version. Returns warnings too.

        A version exists only once its package is stored, checked and (with ``prepare(digest)``,
        the scheduler's unpack) unpacked: a failure before that leaves no version, and no package
        that no version refers to. (A process killed meanwhile leaves at most an unreferenced
        package or a temporary directory; the embedded mode's start removes them, see
        ``wiring.collect_unreferenced``.)

        ``before_publish(record)``, if given, is called with the record as it will be once published,
        after the code and the version are stored and before the function points at them: the
        pre-warm hook, which starts the new version's instances while the old one still takes traffic.
        It may return a warning (str) for the caller.
        """
        record = self.get(name, fresh=True)
        if filename is not None:
            data = codepkg.zip_single_file(filename, data)
        info = codepkg.inspect_zip(data, self.limits)
        if record.version and info.digest == record.digest:
            # The same code again (make up, a CI redeploy): no new version, nothing restarted.
            return record, self.version(name, record.version), [
                f"the code is identical to version {record.version}; no new version was made"]
        if record.config.runtime.startswith("provided"):
            # A custom runtime's entry point is an executable: present or not is all that can be checked.
            warnings = []
            if not codepkg.handler_file_present(info.names, record.config.handler, record.config.runtime):
                warnings.append(f"the package has no bootstrap (nor a file {record.config.handler!r}); invocations "
                                "will fail with Runtime.InvalidEntrypoint until the code is fixed (for the Go and "
                                "Java examples: make examples)")
        else:
            # A handler that cannot load is refused here, with its file and line, not at the first call.
            warnings = handler_check.check_package(data, record.config.handler, record.config.runtime)
        # 1. the code, durably
        self.blobs.put(info.digest, data)
        try:
            if prepare is not None:
                prepare(info.digest)
        except BaseException:
            self._collect_garbage({info.digest})
            raise
        # 2. the version: claim the next number atomically
        for _ in range(CAS_ATTEMPTS):
            record = self.get(name, fresh=True)
            existing = self.versions(name)
            number = max([record.version] + [v.version for v in existing]) + 1
            version = CodeVersion(version=number, digest=info.digest, size=info.size, files=info.files,
                                  unpacked_size=info.unpacked_size, created_at=time.time())
            try:
                self.meta.put(_vkey(name, number), version.to_dict(), expected_revision=0)
                break
            except RevisionConflict:
                continue
        else:
            raise Conflict(f"function {name!r} is receiving concurrent uploads; try again")
        # 3. warm it up while the previous version still serves
        if before_publish is not None:
            pending = FunctionRecord(config=record.config, version=number, digest=info.digest,
                                     created_at=record.created_at, updated_at=time.time(), routing=record.routing)
            note = before_publish(pending)
            if note:
                warnings.append(note)
        # 4. point the function at it
        for _ in range(CAS_ATTEMPTS):
            record = self.get(name, fresh=True)
            if record.version >= number:
                break
            new = FunctionRecord(config=record.config, version=number, digest=info.digest,
                                 created_at=record.created_at, updated_at=time.time(), routing=record.routing)
            try:
                self.meta.put(_fkey(name), self._doc(new), expected_revision=record.revision)
                break
            except RevisionConflict:
                continue
        self._changed(name)
        return self.get(name, fresh=True), version, warnings

    def versions(self, name: str) -> list[CodeVersion]:
        return [CodeVersion(**doc) for _, doc, _ in self.meta.list(f"versions/{name}/")]

    def version(self, name: str, number: int) -> CodeVersion:
        got = self.meta.get(_vkey(name, number))
        if not got:
            raise NotFound(f"function {name!r} has no version {number}")
        return CodeVersion(**got[0])

    def code(self, digest: str) -> bytes:
        return self.blobs.get(digest)

    # -- triggers ------------------------------------------------------------------------

    def add_trigger(self, function: str, method: str, path: str, invocation: str | None = None, *, auth=None,
                    cors=None) -> Trigger:
        for fname, value in (("method", method), ("path", path)):
            if not isinstance(value, str):
                raise ValidationError(f"{fname} must be a string, got {value!r}", field=fname)
        if not isinstance(function, str):
            raise ValidationError("function must be a string: NAME, NAME:VERSION or NAME:ALIAS", field="function")
        base, qualifier = routing.split_target(function)
        validate_name(base)
        qualifier = routing.validate_qualifier(qualifier, "function")
        function = f"{base}:{qualifier}" if qualifier else base
        invocation = invocation or "sync"
        if invocation not in ("sync", "async"):
            raise ValidationError(f"invocation must be sync or async; got {invocation!r}", field="invocation")
        method = normalise_method(method)
        parse_path(path)
        auth = trigger_policy.validate_auth(auth)
        cors = trigger_policy.validate_cors(cors)
        self.published.check_target(function)
        key = route_key(method, path)
        trigger = Trigger(method=method, path=path, function=function, created_at=time.time(), auth=auth, cors=cors,
                          invocation=invocation)
        try:
            self.meta.put(_tkey(key), trigger.to_doc(), expected_revision=0)
        except RevisionConflict:
            got = self.meta.get(_tkey(key))
            other = got[0] if got else {}
            raise Conflict(f"{method} {path} conflicts with the trigger {other.get('method')} {other.get('path')} "
                           f"of function {other.get('function')!r}; remove that one first or pick another path",
                           field="path") from None
        # A function deleted meanwhile must not keep a trigger.
        if self.find(base, fresh=True) is None:
            self._delete_trigger_records(key)
            raise FunctionNotFound(f"function {base!r} does not exist")
        # Keys left by an earlier trigger of the same route must not open this one.
        for k, _, _ in self.meta.list(_kprefix(key)):
            self.meta.delete(k)
        self._changed(base)
        return trigger

    def _delete_trigger_records(self, key: str) -> None:
        self.meta.delete(_tkey(key))
        for k, _, _ in self.meta.list(_kprefix(key)):
            self.meta.delete(k)

    def find_trigger(self, method: str, path: str) -> Trigger | None:
        got = self.meta.get(_tkey(route_key(method, path)))
        return Trigger.from_doc(got[0]) if got else None

    def remove_trigger(self, method: str, path: str) -> Trigger:
        key = route_key(method, path)
        got = self.meta.get(_tkey(key))
        if not got:
            raise NotFound(f"no trigger {method.upper()} {path}")
        self._delete_trigger_records(key)
        trigger = Trigger.from_doc(got[0])
        self._changed(routing.split_target(trigger.function)[0])
        return trigger

    def trigger(self, method: str, path: str) -> Trigger:
        got = self.meta.get(_tkey(route_key(method, path)))
        if not got:
            raise NotFound(f"no trigger {method.upper()} {path}")
        return Trigger.from_doc(got[0])

    def triggers(self, function: str | None = None) -> list[Trigger]:
        keys: dict[str, list[str]] = {}
        for k, doc, _ in self.meta.list("triggerkeys/"):
            keys.setdefault(k.split("/")[1], []).append(doc.get("sha256") or doc.get("secret") or "")
        out = []
        for k, doc, _ in self.meta.list("triggers/"):
            # A function's triggers include those of its versions and aliases (``NAME:QUALIFIER``).
            if function is None or routing.split_target(doc.get("function") or "")[0] == function:
                out.append(Trigger.from_doc(doc, tuple(keys.get(k.split("/", 1)[1], ()))))
        return out

    # -- trigger keys (bearer keys and HMAC secrets) ---------------------------------------

    def create_trigger_key(self, method: str, path: str, name: str | None = None) -> tuple[dict, str]:
        """A new key of a bearer or hmac trigger: (its public record, the key itself). The key is
        returned this once: a bearer key is stored as its SHA-256 only; an HMAC secret must be kept
        to check signatures, but no API answer ever contains it again."""
        trigger = self.trigger(method, path)
        kind = trigger.auth_type
        if kind not in ("bearer", "hmac"):
            raise Conflict(f"the trigger {trigger.method} {trigger.path} has auth type {kind!r}; keys are for "
                           "triggers with auth type bearer or hmac", field="auth")
        key = route_key(method, path)
        existing = {doc["name"] for _, doc, _ in self.meta.list(_kprefix(key))}
        if len(existing) >= trigger_policy.MAX_KEYS:
            raise Conflict(f"the trigger already has {trigger_policy.MAX_KEYS} keys, the most it may hold; revoke "
                           "one first", field="name")
        name = trigger_policy.validate_key_name(name) if name is not None else f"key-{_secrets.token_hex(3)}"
        value = ("fk_" if kind == "bearer" else "fhs_") + _secrets.token_urlsafe(32)
        doc = {"name": name, "kind": kind, "created_at": time.time(), "hint": value[:7]}
        doc.update({"sha256": trigger_policy.hash_key(value)} if kind == "bearer" else {"secret": value})
        try:
            self.meta.put(_kprefix(key) + name, doc, expected_revision=0)
        except RevisionConflict:
            raise Conflict(f"the trigger already has a key named {name!r}; revoke it or pick another name",
                           field="name") from None
        self._changed(routing.split_target(trigger.function)[0])
        return _public_key(doc, trigger), value

    def trigger_keys(self, method: str, path: str) -> list[dict]:
        trigger = self.trigger(method, path)
        return [_public_key(doc, trigger) for _, doc, _ in self.meta.list(_kprefix(route_key(method, path)))]

    def revoke_trigger_key(self, method: str, path: str, name: str) -> dict:
        trigger = self.trigger(method, path)
        k = _kprefix(route_key(method, path)) + trigger_policy.validate_key_name(name)
        got = self.meta.get(k)
        if not got:
            raise NotFound(f"the trigger {trigger.method} {trigger.path} has no key named {name!r}")
        self.meta.delete(k)
        self._changed(routing.split_target(trigger.function)[0])
        return _public_key(got[0], trigger)

    def peek_routes(self) -> RouteTable | None:
        """The route table without waiting on the network: from the cache, or read when the
        metadata store is local; None when only a remote read could answer (an event loop's
        question: it then asks :meth:`routes` from a thread)."""
        cached = self._routes
        if cached and self._clock() - cached[0] < self._ttl:
            return cached[1]
        return None if getattr(self.meta, "remote", True) else self.routes()

    def peek(self, name: str) -> FunctionRecord | None:
        """The function without waiting on the network (see :meth:`peek_routes`); raises
        Function.NotFound as :meth:`get` does when it can tell."""
        hit = self._records.get(name)
        if hit and hit[1] is not None and self._clock() - hit[0] < self._ttl:
            return hit[1]
        return None if getattr(self.meta, "remote", True) else self.get(name)

    def routes(self) -> RouteTable:
        now = self._clock()
        with self._lock:
            cached = self._routes
        if cached and now - cached[0] < self._ttl:
            return cached[1]
        table = RouteTable(self.triggers())
        with self._lock:
            self._routes = (now, table)
        return table


def _public_key(doc: dict, trigger: Trigger) -> dict:
    """What the API shows of a key: never the key, its hash or the HMAC secret."""
    return {"name": doc["name"], "type": doc["kind"], "hint": doc.get("hint", ""), "created_at": doc["created_at"],
            "method": trigger.method, "path": trigger.path, "function": trigger.function}


def ensure_name(name: str) -> str:
    try:
        return validate_name(name)
    except ValidationError:
        raise FunctionNotFound(f"function {name!r} does not exist") from None
