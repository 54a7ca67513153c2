"""The platform's nouns: functions, code versions, triggers, instances, invocation records.

Plain dataclasses with no IO. ``FunctionConfig.from_request`` is the single place API input for a
function is validated; each error names the field and says how to fix it.
"""

from __future__ import annotations

import dataclasses
import re
import time
from dataclasses import dataclass, field
from typing import Any

from appliance.core import scheduled_min
from appliance.core.async_invoke import merge_config, validate_config
from appliance.core.errors import ValidationError
from appliance.core.routing import EMPTY as NO_ROUTING
from appliance.core.routing import Routing

#: ``provided`` (alias ``provided.al2023``) runs the package's own executable ``bootstrap`` through the
#: Lambda Runtime API (runtimes/provided/bootstrap.py), which is how any language runs here.
PROVIDED_RUNTIMES = ("provided", "provided.al2023")
RUNTIMES = ("python3.11", "nodejs20", *PROVIDED_RUNTIMES)
#: Functions become Consul/Nomad service names ("fn-<name>"): RFC 1123 labels of at most 63
#: characters, so names are 1-60 characters and do not end with '-'.
#: Anchored with ``\Z``, never ``$``: ``$`` also matches before a final newline, and "abc\n" was
#: created as a function name that broke ``faas ls``.
NAME_RE = re.compile(r"[a-z](?:[a-z0-9-]{0,58}[a-z0-9])?\Z")
HANDLER_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(/[A-Za-z_][A-Za-z0-9_.-]*)*\.[A-Za-z_$][A-Za-z0-9_$]*\Z")
ENV_KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
#: A custom runtime's handler is the bootstrap's to read (``_HANDLER``), as on Lambda: any short name.
PROVIDED_HANDLER_RE = re.compile(r"[A-Za-z0-9_$][A-Za-z0-9_.$/:-]{0,127}\Z")
RESERVED_ENV_PREFIXES = ("FAAS_", "NOMAD_", "AWS_LAMBDA_")
#: Names the runtime sets as Lambda does (runtimes/README.md, "The Lambda environment").
RESERVED_ENV_NAMES = frozenset({"_HANDLER", "_X_AMZN_TRACE_ID", "AWS_EXECUTION_ENV", "LAMBDA_TASK_ROOT",
                                "LAMBDA_RUNTIME_DIR", "TZ"})
#: Lambda's logging configuration, which a function sets through its variables here.
USER_LAMBDA_ENV = frozenset({"AWS_LAMBDA_LOG_FORMAT", "AWS_LAMBDA_LOG_LEVEL"})


def is_reserved_env(name: str) -> bool:
    """Whether a function may not set the variable ``name`` (the platform and the runtime own it)."""
    upper = name.upper()
    if upper in USER_LAMBDA_ENV:
        return False
    return upper.startswith(RESERVED_ENV_PREFIXES) or upper in RESERVED_ENV_NAMES
NETWORK_MODES = ("default", "none")
#: The ``snapshot`` setting: ``auto`` (fork cold starts from an initialised template) or ``off``.
SNAPSHOT_MODES = ("off", "auto")

MEMORY_MB = (128, 10240)
TIMEOUT_S = (1, 900)
CONCURRENCY = (1, 1000)
MAX_INSTANCES = (1, 1000)
KEEP_ALIVE_S = (0, 86400)
ENV_MAX_BYTES = 4096
SECRETS_MAX_BYTES = 4096
#: How the API, the CLI and the console show a secret's value; sent back, it keeps the value.
MASK = "****"
#: Layers a function may use, as on Lambda.
MAX_LAYERS = 5
LAYER_REF_RE = re.compile(r"^([a-z](?:[a-z0-9-]{0,58}[a-z0-9])?):([1-9][0-9]{0,8})\Z")
DESCRIPTION_MAX = 256


def _text(s: str) -> bool:
    """Whether ``s`` is valid Unicode text (JSON's ``\\ud800`` escapes decode to lone surrogates)."""
    try:
        s.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def _int_field(data: dict, name: str, default: int | None, bounds: tuple[int, int]) -> int:
    value = data.get(name, default)
    if value is None:
        raise ValidationError(f"{name} is required: give an integer from {bounds[0]} to {bounds[1]}", field=name)
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # JSON has one number type: 5.0 is the integer 5 (JSON Schema agrees)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError(
            f"{name} must be an integer from {bounds[0]} to {bounds[1]}, got {value!r}", field=name
        )
    if not bounds[0] <= value <= bounds[1]:
        raise ValidationError(f"{name} must be from {bounds[0]} to {bounds[1]}, got {value}", field=name)
    return value


def validate_name(name: Any) -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ValidationError(
            f"name must be 1-60 characters of lowercase letters, digits and '-', starting with a letter and not "
            f"ending with '-'; got {name!r}",
            field="name",
        )
    return name


@dataclass(frozen=True)
class FunctionConfig:
    """What a user sets for a function. Immutable; updates make a new one."""

    name: str
    runtime: str = "python3.11"
    handler: str = "index.handler"
    memory_mb: int = 128
    timeout_s: int = 3
    concurrency: int = 1
    max_instances: int = 10
    min_instances: int = 0
    keep_alive_s: int = 90
    environment: dict[str, str] = field(default_factory=dict)
    description: str = ""
    network: str = "default"
    #: Variables like ``environment`` whose values are write-only: stored encrypted, never shown.
    secrets: dict[str, str] = field(default_factory=dict, repr=False)
    #: Show anonymous HTTP trigger callers the function's error message and stack trace
    #: (development); off, they get only the code and the request id.
    expose_errors: bool = False

    #: Layer versions ``NAME:VERSION``, applied in order under /opt (later ones win on a clash).
    layers: tuple[str, ...] = ()

    #: The API's ``async`` field (a keyword in Python): retries, event age, destinations
    #: (appliance/core/async_invoke.py).
    async_config: dict = field(default_factory=dict)
    #: Scheduled min_instances: [{"schedule": "cron(...)", "min_instances": N, "timezone": ...}]
    #: (appliance/core/scheduled_min.py).
    min_instances_schedule: list = field(default_factory=list)
    #: Cold starts forked from an initialised template of the version (``auto``, Python only) or not
    #: (``off``, the default: see appliance/instances/templates.py for why).
    snapshot: str = "off"

    FIELDS = (
        "name", "runtime", "handler", "memory_mb", "timeout_s", "concurrency", "max_instances",
        "min_instances", "keep_alive_s", "environment", "description", "network", "secrets", "expose_errors", "layers",
        "async", "min_instances_schedule", "snapshot",
    )

    @classmethod
    def from_request(cls, data: Any, *, base: FunctionConfig | None = None, name: str | None = None) -> FunctionConfig:
        """Validate API input. With ``base``, fields left out keep their current values (update)."""
        if not isinstance(data, dict):
            raise ValidationError("the request body must be a JSON object of function settings", field="body")
        unknown = sorted(set(data) - set(cls.FIELDS))
        if unknown:
            raise ValidationError(
                f"unknown field {unknown[0]!r}; known fields are: {', '.join(cls.FIELDS)}", field=unknown[0]
            )
        merged = base.to_dict() if base else {}
        merged.update(data)
        merged["secrets"] = _merge_secrets(base.secrets if base else {}, data.get("secrets"))
        if base is not None and "async" in data:
            merged["async"] = merge_config(base.async_config, data["async"])
        if name is not None:
            if "name" in data and data["name"] != name:
                raise ValidationError(
                    f"name in the body ({data['name']!r}) differs from the name in the URL ({name!r}); "
                    "a function cannot be renamed", field="name")
            merged["name"] = name
        return cls._validated(merged)

    @classmethod
    def _validated(cls, d: dict) -> FunctionConfig:
        name = validate_name(d.get("name"))
        runtime = d.get("runtime", "python3.11")
        if not isinstance(runtime, str) or runtime not in RUNTIMES:
            raise ValidationError(f"runtime must be one of {', '.join(RUNTIMES)}; got {runtime!r}", field="runtime")
        handler = d.get("handler", "index.handler")
        if runtime in PROVIDED_RUNTIMES:
            if not isinstance(handler, str) or not PROVIDED_HANDLER_RE.match(handler) or ".." in handler:
                raise ValidationError(
                    "handler of a provided runtime must be 1-128 characters of letters, digits and '_.$/:-' "
                    f"(the bootstrap reads it as _HANDLER); got {handler!r}", field="handler")
        elif not isinstance(handler, str) or not HANDLER_RE.match(handler) or ".." in handler:
            raise ValidationError(
                f"handler must look like 'module.function' (for example 'index.handler'); got {handler!r}",
                field="handler",
            )
        memory_mb = _int_field(d, "memory_mb", 128, MEMORY_MB)
        timeout_s = _int_field(d, "timeout_s", 3, TIMEOUT_S)
        concurrency = _int_field(d, "concurrency", 1, CONCURRENCY)
        if runtime in PROVIDED_RUNTIMES and concurrency != 1:
            raise ValidationError(
                "concurrency of a provided runtime must be 1: its bootstrap process handles one invocation at a "
                "time, as on Lambda; raise max_instances instead", field="concurrency")
        max_instances = _int_field(d, "max_instances", 10, MAX_INSTANCES)
        min_instances = _int_field(d, "min_instances", 0, (0, MAX_INSTANCES[1]))
        if min_instances > max_instances:
            raise ValidationError(
                f"min_instances ({min_instances}) cannot exceed max_instances ({max_instances}); "
                "lower min_instances or raise max_instances", field="min_instances")
        keep_alive_s = _int_field(d, "keep_alive_s", 90, KEEP_ALIVE_S)
        env = _variables(d.get("environment"), "environment", ENV_MAX_BYTES)
        secrets = _variables(d.get("secrets"), "secrets", SECRETS_MAX_BYTES)
        clash = sorted(set(env) & set(secrets))
        if clash:
            raise ValidationError(f"{clash[0]!r} is both an environment variable and a secret; keep one",
                                  field="secrets")
        expose_errors = d.get("expose_errors")
        expose_errors = False if expose_errors is None else expose_errors
        if not isinstance(expose_errors, bool):
            raise ValidationError(f"expose_errors must be true or false, got {expose_errors!r}", field="expose_errors")
        # Only a missing value (or null) takes the default: 0, false or [] are mistakes to report.
        description = d.get("description")
        description = "" if description is None else description
        if not isinstance(description, str) or len(description) > DESCRIPTION_MAX or not _text(description):
            raise ValidationError(f"description must be a string (valid text) of at most {DESCRIPTION_MAX} characters",
                                  field="description")
        network = d.get("network")
        network = "default" if network is None else network
        if not isinstance(network, str) or network not in NETWORK_MODES:
            raise ValidationError(f"network must be one of {', '.join(NETWORK_MODES)}; got {network!r}", field="network")
        layers = validate_layer_refs(d.get("layers"))
        async_config = validate_config(d.get("async"))
        min_schedule = scheduled_min.validate(d.get("min_instances_schedule"), max_instances)
        snapshot = d.get("snapshot")
        snapshot = "off" if snapshot is None else snapshot
        if snapshot not in SNAPSHOT_MODES:
            raise ValidationError(f"snapshot must be one of {', '.join(SNAPSHOT_MODES)}; got {snapshot!r}",
                                  field="snapshot")
        return cls(name=name, runtime=runtime, handler=handler, memory_mb=memory_mb, timeout_s=timeout_s,
                   concurrency=concurrency, max_instances=max_instances, min_instances=min_instances,
                   keep_alive_s=keep_alive_s, environment=dict(env), description=description, network=network,
                   secrets=dict(secrets), expose_errors=expose_errors, layers=layers,
                   async_config=async_config, min_instances_schedule=min_schedule, snapshot=snapshot)

    def to_dict(self) -> dict:
        """Every field but the secrets' values (see :meth:`masked_secrets`); the store seals them apart."""
        d = dataclasses.asdict(self)
        d.pop("secrets")
        d["async"] = d.pop("async_config")
        return d

    def masked_secrets(self) -> dict[str, str]:
        return {k: MASK for k in sorted(self.secrets)}

    @classmethod
    def from_dict(cls, d: dict, secrets: dict[str, str] | None = None) -> FunctionConfig:
        got = {k: v for k, v in d.items() if k in cls.FIELDS and k not in ("secrets", "async")}
        got["layers"] = tuple(got.get("layers") or ())
        if d.get("async"):
            got["async_config"] = d["async"]
        return cls(**got, secrets=dict(secrets or {}))


def _variables(value: Any, field_name: str, max_bytes: int) -> dict[str, str]:
    """Validated NAME: value strings for a process environment (``environment`` or ``secrets``)."""
    what = "environment variable" if field_name == "environment" else "secret"
    value = {} if value is None else value
    if not isinstance(value, dict):
        raise ValidationError(f"{field_name} must be an object of NAME: value strings", field=field_name)
    size = 0
    for key, v in value.items():
        if not isinstance(key, str) or not ENV_KEY_RE.match(key):
            raise ValidationError(
                f"{what} name {key!r} is invalid: use letters, digits and '_', not starting with a digit",
                field=field_name)
        if is_reserved_env(key):
            raise ValidationError(
                f"{what} {key!r} is reserved (the platform sets it; prefixes {', '.join(RESERVED_ENV_PREFIXES)} and "
                f"{', '.join(sorted(RESERVED_ENV_NAMES))} are reserved, but AWS_REGION, AWS_LAMBDA_LOG_FORMAT and "
                "AWS_LAMBDA_LOG_LEVEL may be set); rename it", field=field_name)
        if not isinstance(v, str):
            shown = "a " + type(v).__name__ if field_name == "secrets" else repr(v)
            raise ValidationError(f"{what} {key!r} must be a string, got {shown}", field=field_name)
        if "\x00" in v:
            # A process environment cannot hold NUL: every start of the function would fail.
            raise ValidationError(f"{what} {key!r} contains a NUL character; remove it", field=field_name)
        try:
            size += len(key) + len(v.encode("utf-8"))   # bytes, as Lambda counts them
        except UnicodeEncodeError:
            raise ValidationError(f"{what} {key!r} is not valid text (a lone surrogate)", field=field_name) from None
    if size > max_bytes:
        raise ValidationError(
            f"{field_name} is {size} bytes; the limit is {max_bytes}: store large values in the code package",
            field=field_name)
    return dict(value)


def _merge_secrets(current: dict[str, str], given: Any) -> Any:
    """An update's secrets: names given are set, a null removes one, and the mask ("****", what a
    read shows) keeps the current value, so a client can send back what it read."""
    if given is None:
        return dict(current)
    if not isinstance(given, dict):
        return given  # reported by validation
    out = dict(current)
    for key, value in given.items():
        if value is None:
            out.pop(key, None)
        elif value == MASK:
            if key not in current:
                raise ValidationError(f"secret {key!r} has no value yet; send its value, not {MASK}", field="secrets")
        else:
            out[key] = value
    return out


def validate_layer_refs(value: Any) -> tuple[str, ...]:
    """``["NAME:VERSION", ...]``: at most MAX_LAYERS, each layer name once (whether each exists is the
    function store's check)."""
    if value is None:
        return ()
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ValidationError('layers must be a list of "NAME:VERSION" strings', field="layers")
    if len(value) > MAX_LAYERS:
        raise ValidationError(f"a function may use at most {MAX_LAYERS} layers; got {len(value)}", field="layers")
    names = set()
    for ref in value:
        m = LAYER_REF_RE.match(ref)
        if not m:
            raise ValidationError(f'layer {ref!r} is not "NAME:VERSION" (a layer name and a version number)',
                                  field="layers")
        if m.group(1) in names:
            raise ValidationError(f"layer {m.group(1)!r} is listed twice; use one version of it", field="layers")
        names.add(m.group(1))
    return tuple(value)


@dataclass(frozen=True)
class CodeVersion:
    """One immutable upload of a function's code."""

    version: int
    digest: str           # sha256 of the normalised zip, hex
    size: int             # bytes of the zip
    files: int
    unpacked_size: int
    created_at: float

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class FunctionRecord:
    """A function as stored: its settings, its current code version, and bookkeeping."""

    config: FunctionConfig
    version: int = 0                 # 0 = no code uploaded yet
    digest: str | None = None
    created_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)
    revision: int = 0                # metadata store revision, for check-and-set
    #: Published version numbers and aliases (appliance/core/routing.py): carried with the record so
    #: an alias resolves from the record an edge already holds.
    routing: Routing = NO_ROUTING

    @property
    def name(self) -> str:
        return self.config.name

    def to_doc(self) -> dict:
        """The stored document, without the secrets (the store adds them sealed)."""
        doc = {"config": self.config.to_dict(), "version": self.version, "digest": self.digest,
               "created_at": self.created_at, "updated_at": self.updated_at}
        if self.routing:
            doc["routing"] = self.routing.to_doc()
        return doc

    @classmethod
    def from_doc(cls, doc: dict, revision: int, secrets: dict[str, str] | None = None) -> FunctionRecord:
        return cls(config=FunctionConfig.from_dict(doc["config"], secrets), version=doc.get("version", 0),
                   digest=doc.get("digest"), created_at=doc.get("created_at", 0.0),
                   updated_at=doc.get("updated_at", 0.0), revision=revision,
                   routing=Routing.from_doc(doc.get("routing")))

    def to_api(self) -> dict:
        d = self.config.to_dict()
        d["secrets"] = self.config.masked_secrets()
        d.update(version=self.version, code_sha256=self.digest, created_at=self.created_at,
                 updated_at=self.updated_at)
        return d


@dataclass(frozen=True)
class InstanceSpec:
    """Everything a scheduler needs to start one instance of one function version."""

    function: str
    version: int
    digest: str
    runtime: str
    handler: str
    memory_mb: int
    timeout_s: int
    concurrency: int
    #: The function's environment and secrets together (kept out of reprs and log lines).
    environment: dict[str, str] = field(repr=False)
    network: str = "default"
    #: True for instances kept for min_instances; schedulers may place them differently.
    reserved: bool = False
    #: Layer versions ``NAME:VERSION`` in order (the scheduler resolves them to packages).
    layers: tuple[str, ...] = ()
    #: ``auto``: cold starts fork from a snapshot template where the launcher can (FunctionConfig.snapshot).
    snapshot: str = "off"
    #: The published version these instances run (0: ``$LATEST``); see :attr:`pool`.
    published: int = 0

    @property
    def pool(self) -> str:
        return pool_key(self.function, self.published)

    @classmethod
    def of(cls, record: FunctionRecord, *, reserved: bool = False, published: int = 0) -> InstanceSpec:
        c = record.config
        return cls(function=c.name, version=record.version, digest=record.digest or "", runtime=c.runtime,
                   handler=c.handler, memory_mb=c.memory_mb, timeout_s=c.timeout_s, concurrency=c.concurrency,
                   environment={**c.environment, **c.secrets}, network=c.network, reserved=reserved,
                   layers=tuple(c.layers), snapshot=c.snapshot, published=published)


def pool_key(function: str, published: int = 0) -> str:
    """The activator's pool of a function's instances: ``NAME`` for ``$LATEST``, ``NAME:N`` for
    published version N (instances of different versions, with different settings, never mix)."""
    return f"{function}:{published}" if published else function


@dataclass
class Instance:
    """A running, ready instance as the data plane sees it."""

    id: str
    function: str
    version: int
    address: str                      # "host:port" or "unix:/path/to.sock"
    concurrency: int = 1
    node: str = "local"
    started_at: float = field(default_factory=time.time)
    #: Cold-start phases in ms measured by whoever started it (placement, code_fetch, sandbox, runtime_init, user_init).
    phases: dict[str, float] = field(default_factory=dict)
    #: Process id on its node, when the scheduler knows it (operators' tools, memory accounting).
    pid: int | None = None
    #: The published version it runs (0: ``$LATEST``).
    published: int = 0

    @property
    def pool(self) -> str:
        return pool_key(self.function, self.published)

    def to_api(self) -> dict:
        return {"id": self.id, "function": self.function, "version": self.version, "address": self.address,
                "concurrency": self.concurrency, "node": self.node, "started_at": self.started_at, "pid": self.pid,
                "executed_version": str(self.published) if self.published else "$LATEST"}


@dataclass(frozen=True)
class Trigger:
    """An HTTP route bound to a function, with who may call it (``auth``) and from which browser
    origins (``cors``); see :mod:`appliance.core.trigger_policy`."""

    method: str       # GET, POST, ... or ANY
    path: str         # /users/{id}, /files/{proxy+}
    function: str
    created_at: float = 0.0
    #: Normalised auth settings; None = anyone may call.
    auth: dict | None = None
    #: Normalised CORS settings; None = no CORS headers, preflights are routed like any request.
    cors: dict | None = None
    #: The trigger's keys as the edge checks them: SHA-256 hashes of bearer keys, or HMAC secrets.
    #: Loaded with the trigger, never part of what the API shows.
    keys: tuple[str, ...] = field(default=(), compare=False, repr=False)
    #: "sync" (the answer is the function's) or "async" (202 once the event is queued).
    invocation: str = "sync"

    @property
    def key(self) -> str:
        return f"{self.method} {self.path}"

    @property
    def auth_type(self) -> str:
        return self.auth["type"] if self.auth else "none"

    def to_doc(self) -> dict:
        """As stored (without keys: they are records of their own)."""
        return {"method": self.method, "path": self.path, "function": self.function, "created_at": self.created_at,
                "auth": self.auth, "cors": self.cors, "invocation": self.invocation}

    @classmethod
    def from_doc(cls, doc: dict, keys: tuple[str, ...] = ()) -> "Trigger":
        return cls(method=doc["method"], path=doc["path"], function=doc["function"],
                   created_at=doc.get("created_at", 0.0), auth=doc.get("auth"), cors=doc.get("cors"), keys=keys,
                   invocation=doc.get("invocation") or "sync")

    def to_dict(self) -> dict:
        """As the API shows it: secrets of the trigger are never included."""
        out = self.to_doc()
        out["auth"] = self.auth or {"type": "none"}
        if self.invocation == "sync":
            out.pop("invocation", None)
        return out
