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

from appliance.core.errors import ValidationError

RUNTIMES = ("python3.11", "nodejs20")
#: Functions become Consul/Nomad service names ("fn-<name>"): RFC 1123 labels of at most 63
#: characters, so names are 1-60 characters and do not end with '-'.
#: Anchored with ``\Z``, never ``$``: ``$`` also matches before a final newline, and "abc\n" was
#: created as a function name that broke ``faas ls``.
NAME_RE = re.compile(r"[a-z](?:[a-z0-9-]{0,58}[a-z0-9])?\Z")
HANDLER_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(/[A-Za-z_][A-Za-z0-9_.-]*)*\.[A-Za-z_$][A-Za-z0-9_$]*\Z")
ENV_KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
RESERVED_ENV_PREFIXES = ("FAAS_", "NOMAD_", "AWS_LAMBDA_")
NETWORK_MODES = ("default", "none")

MEMORY_MB = (128, 10240)
TIMEOUT_S = (1, 900)
CONCURRENCY = (1, 1000)
MAX_INSTANCES = (1, 1000)
KEEP_ALIVE_S = (0, 86400)
ENV_MAX_BYTES = 4096
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

    FIELDS = (
        "name", "runtime", "handler", "memory_mb", "timeout_s", "concurrency", "max_instances",
        "min_instances", "keep_alive_s", "environment", "description", "network",
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
        merged = dataclasses.asdict(base) if base else {}
        merged.update(data)
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
        if not isinstance(handler, str) or not HANDLER_RE.match(handler) or ".." in handler:
            raise ValidationError(
                f"handler must look like 'module.function' (for example 'index.handler'); got {handler!r}",
                field="handler",
            )
        memory_mb = _int_field(d, "memory_mb", 128, MEMORY_MB)
        timeout_s = _int_field(d, "timeout_s", 3, TIMEOUT_S)
        concurrency = _int_field(d, "concurrency", 1, CONCURRENCY)
        max_instances = _int_field(d, "max_instances", 10, MAX_INSTANCES)
        min_instances = _int_field(d, "min_instances", 0, (0, MAX_INSTANCES[1]))
        if min_instances > max_instances:
            raise ValidationError(
                f"min_instances ({min_instances}) cannot exceed max_instances ({max_instances}); "
                "lower min_instances or raise max_instances", field="min_instances")
        keep_alive_s = _int_field(d, "keep_alive_s", 90, KEEP_ALIVE_S)
        env = d.get("environment")
        env = {} if env is None else env
        if not isinstance(env, dict):
            raise ValidationError("environment must be an object of NAME: value strings", field="environment")
        size = 0
        for key, value in env.items():
            if not isinstance(key, str) or not ENV_KEY_RE.match(key):
                raise ValidationError(
                    f"environment variable name {key!r} is invalid: use letters, digits and '_', not starting with a digit",
                    field="environment")
            if key.upper().startswith(RESERVED_ENV_PREFIXES):
                raise ValidationError(
                    f"environment variable {key!r} uses a reserved prefix ({', '.join(RESERVED_ENV_PREFIXES)}); rename it",
                    field="environment")
            if not isinstance(value, str):
                raise ValidationError(f"environment variable {key!r} must be a string, got {value!r}", field="environment")
            if "\x00" in value:
                # A process environment cannot hold NUL: every start of the function would fail.
                raise ValidationError(f"environment variable {key!r} contains a NUL character; remove it",
                                      field="environment")
            try:
                size += len(key) + len(value.encode("utf-8"))   # bytes, as Lambda counts them
            except UnicodeEncodeError:
                raise ValidationError(f"environment variable {key!r} is not valid text (a lone surrogate)",
                                      field="environment") from None
        if size > ENV_MAX_BYTES:
            raise ValidationError(
                f"environment is {size} bytes; the limit is {ENV_MAX_BYTES}: store large values in the code package",
                field="environment")
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
        return cls(name=name, runtime=runtime, handler=handler, memory_mb=memory_mb, timeout_s=timeout_s,
                   concurrency=concurrency, max_instances=max_instances, min_instances=min_instances,
                   keep_alive_s=keep_alive_s, environment=dict(env), description=description, network=network)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> FunctionConfig:
        return cls(**{k: v for k, v in d.items() if k in cls.FIELDS})


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

    @property
    def name(self) -> str:
        return self.config.name

    def to_doc(self) -> dict:
        return {"config": self.config.to_dict(), "version": self.version, "digest": self.digest,
                "created_at": self.created_at, "updated_at": self.updated_at}

    @classmethod
    def from_doc(cls, doc: dict, revision: int) -> FunctionRecord:
        return cls(config=FunctionConfig.from_dict(doc["config"]), version=doc.get("version", 0),
                   digest=doc.get("digest"), created_at=doc.get("created_at", 0.0),
                   updated_at=doc.get("updated_at", 0.0), revision=revision)

    def to_api(self) -> dict:
        d = self.config.to_dict()
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
    environment: dict[str, str]
    network: str = "default"
    #: True for instances kept for min_instances; schedulers may place them differently.
    reserved: bool = False

    @classmethod
    def of(cls, record: FunctionRecord, *, reserved: bool = False) -> InstanceSpec:
        c = record.config
        return cls(function=c.name, version=record.version, digest=record.digest or "", runtime=c.runtime,
                   handler=c.handler, memory_mb=c.memory_mb, timeout_s=c.timeout_s, concurrency=c.concurrency,
                   environment=dict(c.environment), network=c.network, reserved=reserved)


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

    def to_api(self) -> dict:
        return {"id": self.id, "function": self.function, "version": self.version, "address": self.address,
                "concurrency": self.concurrency, "node": self.node, "started_at": self.started_at, "pid": self.pid}


@dataclass(frozen=True)
class Trigger:
    """An HTTP route bound to a function."""

    method: str       # GET, POST, ... or ANY
    path: str         # /users/{id}, /files/{proxy+}
    function: str
    created_at: float = 0.0

    @property
    def key(self) -> str:
        return f"{self.method} {self.path}"

    def to_dict(self) -> dict:
        return {"method": self.method, "path": self.path, "function": self.function, "created_at": self.created_at}
