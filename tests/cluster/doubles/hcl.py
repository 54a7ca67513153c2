"""Nomad HCL2 jobspec -> JSON job, as ``/v1/jobs/parse`` does it (reference §3, §4).

Built on python-hcl2. Supports what our jobspecs use: ``variable`` blocks with defaults and a
``Variables`` var-file, ``var.x`` references (whole-value or inside string templates), the job /
group / task block tree with the JSON field names of §4, durations turned into nanoseconds.
Runtime interpolations (``${NOMAD_META_x}``, ``${NOMAD_PORT_http}``, ``${node.unique.id}``,
``${meta.x}``, ``${attr.x}``...) are left in place for the client to resolve, as Nomad does.
Any other HCL expression (functions, conditionals, ``for``) is refused as a parse error.

Strict as jobspec2 is (it decodes each block into a Go struct with gohcl, jobspec2/parse_job.go):
an attribute or block a block does not define is refused, "Unsupported argument; An argument named
"kill_timout" is not expected here." (the real message also names the file position). A var-file
assignment to a variable the job does not declare is only a warning (jobspec2/types.variables.go:
``undefSev`` is DiagWarning unless ParseConfig.Strict, which the parse endpoint does not set), so
it is ignored.
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


def _names(text: str) -> frozenset:
    return frozenset(text.split())


# Attributes and blocks per block type (api/*.go hcl tags, which jobspec2 decodes into). Blocks of
# types not listed here are not checked.
_SCHEMA: dict[str, tuple[frozenset, frozenset]] = {
    "job": (_names("id name region namespace type priority all_at_once datacenters node_pool consul_token "
                   "vault_token meta"),
            _names("group constraint affinity spread update multiregion periodic parameterized meta migrate "
                   "reschedule vault consul ui")),
    "group": (_names("count shutdown_delay stop_after_client_disconnect max_client_disconnect "
                     "prevent_reschedule_on_lost meta"),
              _names("task constraint affinity spread restart reschedule migrate update ephemeral_disk network "
                     "service volume scaling meta consul disconnect")),
    "task": (_names("driver user kill_timeout kill_signal leader shutdown_delay kind config env meta"),
             _names("config env meta resources restart service artifact template constraint affinity "
                    "dispatch_payload lifecycle logs volume_mount vault consul identity scaling csi_plugin action "
                    "schedule")),
    "resources": (_names("cpu cores memory memory_max disk iops secrets"), _names("device numa network")),
    "network": (_names("mode hostname"), _names("port dns")),
    "port": (_names("static to host_network ignore_collision"), frozenset()),
    "service": (_names("name port tags canary_tags enable_tag_override address_mode address task provider "
                       "on_update cluster kind meta canary_meta tagged_addresses"),
                _names("check check_restart connect meta canary_meta tagged_addresses identity weights")),
    "check": (_names("name type port path protocol method interval timeout initial_status tls_skip_verify "
                     "tls_server_name command args grpc_service grpc_use_tls expose address_mode task on_update "
                     "success_before_passing failures_before_critical failures_before_warning body notes header"),
              _names("header check_restart")),
    "check_restart": (_names("limit grace ignore_warnings"), frozenset()),
    "restart": (_names("attempts interval delay mode render_templates"), frozenset()),
    "reschedule": (_names("attempts interval delay delay_function max_delay unlimited"), frozenset()),
    "update": (_names("max_parallel health_check min_healthy_time healthy_deadline progress_deadline "
                      "auto_revert auto_promote canary stagger"), frozenset()),
    "migrate": (_names("max_parallel health_check min_healthy_time healthy_deadline"), frozenset()),
    "scaling": (_names("min max enabled type"), _names("policy")),
    "parameterized": (_names("payload meta_required meta_optional"), frozenset()),
    "constraint": (_names("attribute operator value"), frozenset()),
    "affinity": (_names("attribute operator value weight"), frozenset()),
    "dispatch_payload": (_names("file"), frozenset()),
    "logs": (_names("max_files max_file_size disabled enabled"), frozenset()),
    "lifecycle": (_names("hook sidecar"), frozenset()),
    "ephemeral_disk": (_names("sticky migrate size"), frozenset()),
    "volume_mount": (_names("volume destination read_only propagation_mode selinux_label"), frozenset()),
    "artifact": (_names("source destination mode chown insecure options headers"), _names("options headers")),
    "template": (_names("data source destination change_mode change_signal splay perms uid gid left_delimiter "
                        "right_delimiter env error_on_missing_key once"), _names("change_script wait")),
    "periodic": (_names("cron crons prohibit_overlap time_zone enabled"), frozenset()),
}


def _check_schema(ctx: str, key: str, is_block: bool) -> None:
    schema = _SCHEMA.get(ctx)
    if schema is None:
        return
    attrs, blocks = schema
    if is_block and key not in blocks:
        raise HCLError(f'input.hcl: Unsupported block type; Blocks of type "{key}" are not expected here.')
    if not is_block and key not in attrs:
        raise HCLError(f'input.hcl: Unsupported argument; An argument named "{key}" is not expected here.')


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
        _check_schema(ctx, key, _is_block_list(raw))
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
    given = parse_var_file(variables_text)   # undeclared names: a warning only, ignored
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
