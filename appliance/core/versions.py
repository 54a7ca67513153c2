"""Published versions and aliases over the FunctionStore's metadata (README "Versions and aliases").

A published version is an immutable snapshot of a function's code (its code version and digest) and
settings, numbered 1, 2, 3... per function, stored as ``published/NAME/N``; its secrets are sealed
with the same key as the function's. Which numbers exist, and the aliases, live in the function's
own record (:class:`~appliance.core.routing.Routing`), changed by check-and-set like every other
write of the record: so the edge resolves ``NAME:live`` from the record it already caches, and reads
a published snapshot once (it never changes) to build what runs it (:meth:`VersionStore.executable`).

Invariants:
- The snapshot is written before the record lists its number: a reader never sees a number whose
  snapshot is missing. A delete first removes the number from the record, then the snapshot.
- A version an alias or a trigger points at is not deleted (``Version.InUse``); an alias a trigger
  targets is not deleted (``Alias.InUse``).
- A code package stays while a published version needs it (``digests_in_use`` counts snapshots).
"""

from __future__ import annotations

import dataclasses
import threading
import time
from dataclasses import dataclass

from appliance.core import routing
from appliance.core.errors import (
    AliasInUse,
    AliasNotFound,
    Conflict,
    NoCode,
    RevisionConflict,
    ValidationError,
    VersionInUse,
    VersionNotFound,
)
from appliance.core.model import FunctionConfig, FunctionRecord
from appliance.core.routing import Alias

CAS_ATTEMPTS = 20
#: Published snapshots one process keeps read (a few per function in use; cleared when full).
SNAPSHOT_CACHE_MAX = 10_000
#: Settings a published version keeps but that describe the function, not one version (never compared).
_UNVERSIONED = ("min_instances_schedule",)


def _pkey(name: str, number: int) -> str:
    return f"published/{name}/{number:08d}"


@dataclass(frozen=True)
class PublishedVersion:
    """One published version: code version, digest and settings, as they were when published."""

    function: str
    version: int
    code_version: int
    digest: str
    description: str
    created_at: float
    config: FunctionConfig

    def to_api(self) -> dict:
        config = self.config.to_dict()
        config["secrets"] = self.config.masked_secrets()
        return {"function": self.function, "version": self.version, "code_version": self.code_version,
                "code_sha256": self.digest, "description": self.description, "created_at": self.created_at,
                "config": config}

    def record(self, base: FunctionRecord, *, keep_min: bool) -> FunctionRecord:
        """What runs this version: its settings and code under the function's name. ``keep_min``:
        whether its min_instances apply (only while an alias routes to it; an unreferenced version
        keeps no idle instances)."""
        config = self.config
        if not keep_min and (config.min_instances or config.min_instances_schedule):
            config = dataclasses.replace(config, min_instances=0, min_instances_schedule=[])
        return FunctionRecord(config=config, version=self.code_version, digest=self.digest,
                              created_at=self.created_at, updated_at=self.created_at, revision=base.revision)


def validate_description(data) -> str:
    if data is None:
        return ""
    if not isinstance(data, dict):
        raise ValidationError('the body is optional; if given it is {"description": "..."}', field="body")
    unknown = sorted(set(data) - {"description"})
    if unknown:
        raise ValidationError(f"unknown field {unknown[0]!r}; publishing takes only a description", field=unknown[0])
    d = data.get("description")
    d = "" if d is None else d
    if not isinstance(d, str) or len(d) > routing.DESCRIPTION_MAX:
        raise ValidationError(f"description must be a string of at most {routing.DESCRIPTION_MAX} characters",
                              field="description")
    return d


class VersionStore:
    """Publish, list and delete versions; set and remove aliases; build what runs a version."""

    def __init__(self, functions, *, trigger_users=None):
        self.functions = functions
        self.meta = functions.meta
        #: ``trigger_users(target) -> [descriptions]``: the event triggers (schedules, queues) that
        #: target ``NAME:QUALIFIER`` (given by the wiring; HTTP triggers are the FunctionStore's).
        self.trigger_users = trigger_users
        self._lock = threading.Lock()
        #: (name, the function's created_at, number) -> PublishedVersion: immutable once written, read once
        #: per process (created_at: a function deleted and made again under its name numbers from 1 again).
        self._snapshots: dict[tuple[str, float, int], PublishedVersion] = {}
        #: (name, number) -> (the function record it was built from, the executable record).
        self._exec: dict[tuple[str, int], tuple[FunctionRecord, FunctionRecord]] = {}

    # -- stored documents ----------------------------------------------------------------

    def _doc(self, pv: PublishedVersion) -> dict:
        doc = {"function": pv.function, "version": pv.version, "code_version": pv.code_version, "digest": pv.digest,
               "description": pv.description, "created_at": pv.created_at, "config": pv.config.to_dict()}
        if pv.config.secrets:
            box = self.functions.secrets
            if box is None:
                raise ValidationError("this appliance has no secrets key, so it cannot store secrets", field="secrets")
            doc["sealed_secrets"] = box.seal(pv.config.secrets)
        return doc

    def _from_doc(self, doc: dict) -> PublishedVersion:
        sealed = doc.get("sealed_secrets")
        box = self.functions.secrets
        secrets = box.open(sealed) if sealed and box is not None else {}
        return PublishedVersion(function=doc["function"], version=doc["version"], code_version=doc["code_version"],
                                digest=doc["digest"], description=doc.get("description") or "",
                                created_at=doc.get("created_at", 0.0),
                                config=FunctionConfig.from_dict(doc["config"], secrets))

    def _write_routing(self, name: str, change) -> tuple[FunctionRecord, object]:
        """Check-and-set the record's routing: ``change(record) -> (new Routing, result)``."""
        for _ in range(CAS_ATTEMPTS):
            record = self.functions.get(name, fresh=True)
            new_routing, result = change(record)
            if new_routing is record.routing:
                return record, result
            new = dataclasses.replace(record, routing=new_routing, updated_at=time.time())
            try:
                self.meta.put(f"functions/{name}", self.functions._doc(new), expected_revision=record.revision)
            except RevisionConflict:
                continue
            self.functions._changed(name)
            return self.functions.get(name, fresh=True), result
        raise Conflict(f"function {name!r} is being changed concurrently; try again")

    # -- published versions ----------------------------------------------------------------

    def get(self, name: str, number: int) -> PublishedVersion:
        """A published version, read from the store (the control plane's reads)."""
        got = self.meta.get(_pkey(name, number))
        if not got:
            raise VersionNotFound(f"function {name!r} has no published version {number}; see `faas published {name}`")
        return self._from_doc(got[0])

    def _snapshot(self, base: FunctionRecord, number: int) -> PublishedVersion:
        """A published version of the function ``base`` is the record of, read once per process."""
        key = (base.name, base.created_at, number)
        hit = self._snapshots.get(key)
        if hit is not None:
            return hit
        pv = self.get(base.name, number)
        with self._lock:
            if len(self._snapshots) >= SNAPSHOT_CACHE_MAX:
                self._snapshots.clear()  # bounded; what is in use is read again once
            self._snapshots[key] = pv
        return pv

    def list(self, name: str) -> list[PublishedVersion]:
        """Newest first."""
        record = self.functions.get(name, fresh=True)
        out = [self._from_doc(doc) for _, doc, _ in self.meta.list(f"published/{name}/")]
        listed = set(record.routing.published)
        return sorted((pv for pv in out if pv.version in listed), key=lambda pv: -pv.version)

    def publish(self, name: str, description: str = "") -> tuple[PublishedVersion, bool]:
        """(the version, made now?). Nothing changed since the newest published version: that one."""
        for _ in range(CAS_ATTEMPTS):
            record = self.functions.get(name, fresh=True)
            if not record.version:
                raise NoCode(f"function {name!r} has no code yet; upload it before publishing")
            if record.routing.published:
                newest = self._snapshot(record, max(record.routing.published))
                if newest.digest == record.digest and _same_settings(newest.config, record.config):
                    return newest, False
            if len(record.routing.published) >= routing.MAX_PUBLISHED:
                raise Conflict(f"function {name!r} already has {routing.MAX_PUBLISHED} published versions, the most it "
                               "may keep; delete old ones first", field="version")
            number = record.routing.last + 1
            pv = PublishedVersion(function=name, version=number, code_version=record.version, digest=record.digest,
                                  description=description, created_at=time.time(), config=record.config)
            try:
                self.meta.put(_pkey(name, number), self._doc(pv), expected_revision=0)
            except RevisionConflict:
                # A snapshot left by a publish that lost its record update (or a concurrent one): replace it
                # only if the record does not list it.
                got = self.meta.get(_pkey(name, number))
                if got is None or number in self.functions.get(name, fresh=True).routing.published:
                    continue
                self.meta.put(_pkey(name, number), self._doc(pv), expected_revision=got[1])
            new = dataclasses.replace(record.routing, published=record.routing.published + (number,), last=number)
            new_record = dataclasses.replace(record, routing=new, updated_at=time.time())
            try:
                self.meta.put(f"functions/{name}", self.functions._doc(new_record), expected_revision=record.revision)
            except RevisionConflict:
                continue  # the record changed meanwhile (code, settings): publish what it is now
            self.functions._changed(name)
            return pv, True
        raise Conflict(f"function {name!r} is being changed concurrently; try again")

    def delete(self, name: str, number: int) -> PublishedVersion:
        pv = self.get(name, number)

        def change(record: FunctionRecord):
            r = record.routing
            if number not in r.published:
                raise VersionNotFound(f"function {name!r} has no published version {number}")
            users = [f"alias {a}" for a in r.users_of(number)] + self._triggers_of(name, str(number))
            if users:
                raise VersionInUse(f"published version {number} of {name!r} is in use by {', '.join(users)}; move or "
                                   "remove those first", field="version")
            return dataclasses.replace(r, published=tuple(v for v in r.published if v != number)), None

        self._write_routing(name, change)
        self.meta.delete(_pkey(name, number))
        with self._lock:
            for key in [k for k in self._snapshots if k[0] == name and k[2] == number]:
                self._snapshots.pop(key, None)
            self._exec.pop((name, number), None)
        self.functions._collect_garbage({pv.digest})
        return pv

    def delete_all(self, name: str) -> set[str]:
        """With the function: every published snapshot. Returns their digests (for garbage collection)."""
        digests = set()
        for key, doc, _ in self.meta.list(f"published/{name}/"):
            digests.add(doc.get("digest"))
            self.meta.delete(key)
        with self._lock:
            for key in [k for k in self._snapshots if k[0] == name]:
                self._snapshots.pop(key, None)
            for key in [k for k in self._exec if k[0] == name]:
                self._exec.pop(key, None)
        return digests

    def _triggers_of(self, name: str, qualifier: str) -> list[str]:
        target = f"{name}:{qualifier}"
        out = [f"trigger {t.method} {t.path}" for t in self.functions.triggers() if t.function == target]
        if self.trigger_users is not None:
            out += self.trigger_users(target)
        return out

    # -- aliases ---------------------------------------------------------------------------

    def aliases(self, name: str) -> list[Alias]:
        record = self.functions.get(name, fresh=True)
        return sorted(record.routing.aliases.values(), key=lambda a: a.name)

    def alias(self, name: str, alias: str) -> Alias:
        record = self.functions.get(name, fresh=True)
        got = record.routing.aliases.get(alias)
        if got is None:
            raise AliasNotFound(f"function {name!r} has no alias {alias!r}; see `faas alias ls {name}`")
        return got

    def check_alias(self, name: str, alias: Alias) -> None:
        """The versions ``alias`` names exist (404 Version.NotFound naming the field otherwise)."""
        record = self.functions.get(name, fresh=True)
        for v, f in ((alias.version, "version"), *(((alias.extra[0], "weights"),) if alias.extra else ())):
            if v not in record.routing.published:
                raise VersionNotFound(f"function {name!r} has no published version {v}; publish it first "
                                      f"(`faas publish {name}`)", field=f)

    def set_alias(self, name: str, alias: Alias) -> Alias:
        def change(record: FunctionRecord):
            r = record.routing
            for v, f in ((alias.version, "version"), *(((alias.extra[0], "weights"),) if alias.extra else ())):
                if v not in r.published:
                    raise VersionNotFound(f"function {name!r} has no published version {v}; publish it first "
                                          f"(`faas publish {name}`)", field=f)
            if alias.name not in r.aliases and len(r.aliases) >= routing.MAX_ALIASES:
                raise Conflict(f"function {name!r} already has {routing.MAX_ALIASES} aliases, the most it may have",
                               field="name")
            return dataclasses.replace(r, aliases={**r.aliases, alias.name: alias}), alias

        return self._write_routing(name, change)[1]

    def delete_alias(self, name: str, alias: str) -> Alias:
        def change(record: FunctionRecord):
            r = record.routing
            got = r.aliases.get(alias)
            if got is None:
                raise AliasNotFound(f"function {name!r} has no alias {alias!r}")
            users = self._triggers_of(name, alias)
            if users:
                raise AliasInUse(f"alias {alias!r} of {name!r} is targeted by {', '.join(users)}; remove those first",
                                 field="name")
            return dataclasses.replace(r, aliases={k: v for k, v in r.aliases.items() if k != alias}), got

        return self._write_routing(name, change)[1]

    # -- running a version -------------------------------------------------------------------

    def check_target(self, target: str) -> None:
        """A trigger's target ``NAME[:QUALIFIER]`` names an existing version or alias (else 404)."""
        name, qualifier = routing.split_target(target)
        qualifier = routing.validate_qualifier(qualifier, "function")
        record = self.functions.get(name, fresh=True)
        routing.executed(qualifier, record.routing, 0.0)

    def executable(self, base: FunctionRecord, number: int) -> FunctionRecord:
        """What runs published version ``number`` of the function ``base`` is the record of: built
        once per record of the function (an alias move makes a new record; min_instances apply only
        to versions an alias routes to), from a snapshot read once."""
        key = (base.name, number)
        hit = self._exec.get(key)
        if hit is not None and hit[0] is base:
            return hit[1]
        if number not in base.routing.published:
            raise VersionNotFound(f"function {base.name!r} has no published version {number}")
        record = self._snapshot(base, number).record(base, keep_min=number in base.routing.routed())
        with self._lock:
            if len(self._exec) >= SNAPSHOT_CACHE_MAX:
                self._exec.clear()
            self._exec[key] = (base, record)
        return record

    def build(self, base: FunctionRecord, number: int) -> FunctionRecord:
        """:meth:`executable` without its cache (the scaler's tick, on records it has just listed)."""
        if number not in base.routing.published:
            raise VersionNotFound(f"function {base.name!r} has no published version {number}")
        return self._snapshot(base, number).record(base, keep_min=number in base.routing.routed())

    def peek_executable(self, base: FunctionRecord, number: int) -> FunctionRecord | None:
        """:meth:`executable` when it needs no read of a remote store (for an event loop), else None."""
        hit = self._exec.get((base.name, number))
        if hit is not None and hit[0] is base:
            return hit[1]
        if (base.name, base.created_at, number) in self._snapshots or not getattr(self.meta, "remote", True):
            return self.executable(base, number)
        return None


def _same_settings(a: FunctionConfig, b: FunctionConfig) -> bool:
    da, db = a.to_dict(), b.to_dict()
    for k in _UNVERSIONED:
        da.pop(k, None)
        db.pop(k, None)
    return da == db and a.secrets == b.secrets
