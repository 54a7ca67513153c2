"""Nomad HCL2 jobspec -> JSON job, as ``/v1/jobs/parse`` does it (reference §3, §4).

Built on python-hcl2. Supports what our jobspecs use: ``variable`` blocks with defaults and a
``Variables`` var-file, ``var.x`` references (whole-value or inside string templates), the job /
group / task block tree with the JSON field names of §4, durations turned into nanoseconds.
Runtime interpolations (``${NOMAD_META_x}``, ``${NOMAD_PORT_http}``, ``${node.unique.id}``,
``${meta.x}``, ``${attr.x}``...) are left in place for the client to resolve, as Nomad does.
Any other HCL expression (functions, conditionals, ``for``) is refused as a parse error.
"""
from __future__ import annotations

import re

import hcl2
from hcl2.utils import SerializationOptions

from ._http import parse_go_duration


class HCLError(Exception):
    pass


_OPTS = SerializationOptions(with_comments=False)
_VAR_REF = re.compile(r"^\s*var\.([A-Za-z_][A-Za-z0-9_-]*)\s*$")

# Attributes whose HCL value is a duration string and whose JSON value is nanoseconds.
_DURATIONS = {
    "interval", "timeout", "delay", "kill_timeout", "shutdown_delay", "max_delay",
    "min_healthy_time", "healthy_deadline", "progress_deadline", "stagger", "splay",
    "deadline", "grace", "max_kill_timeout", "stop_after_client_disconnect",
}
# Blocks whose content is a free-form map (keys kept verbatim).
_FREE_FORM = {"config", "env", "meta", "options", "headers", "policy", "header", "labels"}
# HCL name -> JSON field name, where the rule "snake_case -> PascalCase" is not enough.
_NAMES = {
    "id": "ID", "cpu": "CPU", "memory": "MemoryMB", "memory_max": "MemoryMaxMB", "disk": "DiskMB",
    "kill_timeout": "KillTimeout", "restart": "RestartPolicy", "reschedule": "ReschedulePolicy",
    "network": "Networks", "service": "Services", "check": "Checks", "task": "Tasks",
    "group": "TaskGroups", "constraint": "Constraints", "affinity": "Affinities",
    "artifact": "Artifacts", "template": "Templates", "logs": "LogConfig",
    "volume_mount": "VolumeMounts", "parameterized": "ParameterizedJob",
    "meta_required": "MetaRequired", "meta_optional": "MetaOptional",
    "spread": "Spreads", "tls_skip_verify": "TLSSkipVerify", "grpc_service": "GRPCService",
    "grpc_use_tls": "GRPCUseTLS", "max_file_size": "MaxFileSizeMB", "size": "SizeMB",
}
_CONTEXT_NAMES = {
    ("service", "port"): "PortLabel", ("check", "port"): "PortLabel",
    ("service", "task"): "TaskName", ("constraint", "attribute"): "LTarget",
    ("constraint", "value"): "RTarget", ("constraint", "operator"): "Operand",
    ("artifact", "source"): "GetterSource", ("artifact", "destination"): "RelativeDest",
    ("artifact", "options"): "GetterOptions", ("artifact", "headers"): "GetterHeaders",
    ("artifact", "mode"): "GetterMode", ("template", "data"): "EmbeddedTmpl",
    ("template", "destination"): "DestPath", ("template", "source"): "SourcePath",
    ("template", "env"): "Envvars", ("port", "static"): "Value",
}
# Blocks that appear once and become an object (not a list).
_SINGLE = {
    "parameterized", "restart", "reschedule", "resources", "lifecycle", "dispatch_payload",
    "logs", "update", "scaling", "ephemeral_disk", "migrate", "check_restart", "periodic",
    "config", "env", "meta", "options", "headers", "policy", "header",
}


def _pascal(name: str, ctx: str = "") -> str:
    if (ctx, name) in _CONTEXT_NAMES:
        return _CONTEXT_NAMES[(ctx, name)]
    if name in _NAMES:
        return _NAMES[name]
    return "".join(p[:1].upper() + p[1:] for p in name.split("_"))


def _unquote_key(k: str) -> str:
    return k[1:-1] if len(k) >= 2 and k[0] == '"' and k[-1] == '"' else k


def _unescape(s: str) -> str:
    out, i = [], 0
    while i < len(s):
        ch = s[i]
        if ch == "\\" and i + 1 < len(s):
            nxt = s[i + 1]
            out.append({"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\"}.get(nxt, "\\" + nxt))
            i += 2
            continue
        out.append(ch)
        i += 1
    return "".join(out)


class _Evaluator:
    def __init__(self, variables: dict):
        self.vars = variables

    def ref(self, expr: str):
        m = _VAR_REF.match(expr)
        if not m:
            return None, False
        name = m.group(1)
        if name not in self.vars:
            raise HCLError(f'Reference to undeclared input variable: An input variable with the name "{name}" has not been declared.')
        return self.vars[name], True

    def template(self, s: str) -> str:
        """Interpolate ``${var.x}``; keep runtime interpolations; ``$${`` and ``%%{`` are the
        literals ``${`` and ``%{`` (HCL2 template escapes)."""
        out, i = [], 0
        while i < len(s):
            if s.startswith(("$${", "%%{"), i):
                out.append(s[i] + "{")
                i += 3
                continue
            if s.startswith("${", i):
                end = s.find("}", i)
                if end < 0:
                    raise HCLError("Unterminated template string")
                expr = s[i + 2:end]
                value, ok = self.ref(expr)
                if ok:
                    out.append(value if isinstance(value, str) else _hcl_scalar(value))
                elif re.match(r"^\s*[A-Za-z_][A-Za-z0-9_.\-\[\]\"]*\s*$", expr) and not expr.strip().startswith("var."):
                    out.append("${" + expr + "}")  # runtime interpolation, resolved by the client
                else:
                    raise HCLError(f"Unsupported expression in this double: ${{{expr}}}")
                i = end + 1
                continue
            out.append(s[i])
            i += 1
        return "".join(out)

    def value(self, v):
        if isinstance(v, list):
            return [self.value(x) for x in v]
        if isinstance(v, dict):
            return {_unquote_key(k): self.value(x) for k, x in v.items() if k != "__is_block__"}
        if not isinstance(v, str):
            return v
        if len(v) >= 2 and v[0] == '"' and v[-1] == '"':
            inner = v[1:-1]
            if inner.startswith("<<"):
                lines = inner.split("\n")
                body = "\n".join(lines[1:-1]) + "\n"
                return self.template(body)
            return self.template(_unescape(inner))
        if v.startswith("${") and v.endswith("}"):
            expr = v[2:-1]
            value, ok = self.ref(expr)
            if ok:
                return value
            raise HCLError(f"Unsupported expression in this double: {v}")
        return v


def _hcl_scalar(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def _is_block_list(v) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(x, dict) for x in v) and all(
        "__is_block__" in x or (len(x) == 1 and isinstance(next(iter(x.values())), dict)
                                and "__is_block__" in next(iter(x.values())))
        for x in v)


def _blocks(v) -> list[tuple[str | None, dict]]:
    out = []
    for item in v:
        if "__is_block__" in item:
            out.append((None, item))
        else:
            (label, body), = item.items()
            out.append((_unquote_key(label), body))
    return out


def _convert_body(body: dict, ctx: str, ev: _Evaluator) -> dict:
    out: dict = {}
    for key, raw in body.items():
        if key == "__is_block__":
            continue
        if _is_block_list(raw):
            blocks = _blocks(raw)
            if key in _FREE_FORM:
                merged = {}
                for _, b in blocks:
                    merged.update(ev.value(b))
                out[_pascal(key, ctx)] = {k: (_hcl_scalar(v) if key in ("env", "meta") and not isinstance(v, str) else v)
                                          for k, v in merged.items()}
                continue
            if key == "port" and ctx == "network":
                dyn, res = [], []
                for label, b in blocks:
                    p = _convert_body(b, "port", ev)
                    p = {"Label": label, "Value": p.get("Value", 0), "To": p.get("To", 0),
                         "HostNetwork": p.get("HostNetwork", "")}
                    (res if p["Value"] else dyn).append(p)
                if dyn:
                    out["DynamicPorts"] = dyn
                if res:
                    out["ReservedPorts"] = res
                continue
            converted = []
            for label, b in blocks:
                c = _convert_body(b, key, ev)
                if label is not None:
                    c = {"Name": label, **c}
                converted.append(c)
            if key == "volume" and ctx == "group":
                out["Volumes"] = {c["Name"]: c for c in converted}
            elif key in _SINGLE:
                out[_pascal(key, ctx)] = converted[-1]
            else:
                out.setdefault(_pascal(key, ctx), []).extend(converted)
            continue
        value = ev.value(raw)
        if key in _FREE_FORM and isinstance(value, dict):
            out[_pascal(key, ctx)] = {k: (_hcl_scalar(v) if key in ("env", "meta") and not isinstance(v, str) else v)
                                      for k, v in value.items()}
            continue
        if key in _DURATIONS and isinstance(value, str):
            try:
                value = int(round(parse_go_duration(value) * 1e9))
            except ValueError as e:
                raise HCLError(f"{key}: {e}")
        if key == "header" and ctx == "check" and isinstance(value, dict):
            value = {k: v if isinstance(v, list) else [v] for k, v in value.items()}
        out[_pascal(key, ctx)] = value
    return out


def parse_var_file(text: str) -> dict:
    if not text or not text.strip():
        return {}
    try:
        data = hcl2.loads(text, serialization_options=_OPTS)
    except Exception as e:  # lark errors
        raise HCLError(f"Failed to parse var file: {e}")
    ev = _Evaluator({})
    return {k: ev.value(v) for k, v in data.items()}


def _coerce(value, type_expr):
    t = (type_expr or "").replace("${", "").replace("}", "").strip()
    if t == "number" and isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            try:
                return float(value)
            except ValueError:
                raise HCLError(f"Invalid value for variable: a number is required, got {value!r}")
    if t == "string" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if t == "bool" and isinstance(value, str):
        return value == "true"
    return value


def hcl_to_job(text: str, variables_text: str = "") -> dict:
    """Returns the bare Job (not canonicalized). Raises :class:`HCLError` with Nomad-like text."""
    try:
        data = hcl2.loads(text, serialization_options=_OPTS)
    except Exception as e:
        raise HCLError(str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__)
    declared: dict = {}
    for name, body in _blocks(data.get("variable", [])):
        declared[name] = body
    given = parse_var_file(variables_text)
    for name in given:
        if name not in declared:
            raise HCLError(f'Undefined variable: A "{name}" variable was assigned a value, but not declared in the job.')
    values = {}
    for name, body in declared.items():
        if name in given:
            values[name] = _coerce(given[name], body.get("type"))
        elif "default" in body:
            values[name] = _coerce(_Evaluator({}).value(body["default"]), body.get("type"))
        else:
            raise HCLError(f'Unset variable "{name}": A used variable must be set or have a default value')
    ev = _Evaluator(values)
    jobs = _blocks(data.get("job", []))
    if len(jobs) != 1:
        raise HCLError("Expected one job block, found %d" % len(jobs))
    label, body = jobs[0]
    job = _convert_body(body, "job", ev)
    job.setdefault("ID", label)
    job.setdefault("Name", label)
    return job
