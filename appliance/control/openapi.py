"""The control API's contract: an OpenAPI 3.1 document, served at ``GET /v1/openapi.json``.

Written by hand next to the routes rather than generated from them, because what a client needs
(every error code and status an operation can answer, the bodies' shapes and bounds) is not in the
Flask routes. Two tests keep it honest: ``tests/unit/test_openapi.py`` fails when a route and the
document disagree (a path or method only on one side), and ``tests/integration/test_openapi_conformance.py``
runs schemathesis against a live appliance: no 5xx where none is documented, every answer matching
the document.

Auth: the document declares the bearer scheme (API tokens) for every operation, and the read or
write scope each needs as ``x-scope``. A server that does not enforce tokens serves it with the
requirement optional (``auth_required=False``).
"""

from __future__ import annotations

from appliance.core.model import (
    CONCURRENCY,
    DESCRIPTION_MAX,
    KEEP_ALIVE_S,
    MAX_INSTANCES,
    MEMORY_MB,
    NETWORK_MODES,
    RUNTIMES,
    TIMEOUT_S,
)
from appliance.core.records import STATUSES

NAME_PATTERN = r"^[a-z](?:[a-z0-9-]{0,58}[a-z0-9])?$"
TRIGGER_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "ANY"]
#: The API takes a trigger's method in any case (get, GET).
METHOD_SCHEMA = {"type": "string", "pattern": "^(" + "|".join(
    "".join(f"[{c.upper()}{c.lower()}]" for c in m) for m in TRIGGER_METHODS) + ")$",
    "description": "GET, POST, PUT, PATCH, DELETE, HEAD, OPTIONS or ANY (any case)"}


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict) -> dict:
    return {"application/json": {"schema": schema}}


def _error(description: str) -> dict:
    return {"description": description, "content": _json(_ref("Error"))}


#: Error answers by status; each operation lists the ones it can give.
ERRORS = {
    "400": "Request.Invalid, Code.Unsafe: a field, the body or a code package is invalid",
    "401": "Auth.Unauthorized: no valid bearer token",
    "403": "Auth.Forbidden: the caller may not do this (function instances never may)",
    "404": "Function.NotFound, Trigger.NotFound, Code.NotFound, Route.NotFound",
    "409": "Resource.Conflict, Resource.RevisionConflict, Function.NoCode",
    "413": "Request.TooLarge: the body is over the limit",
    "429": "Activation.QueueFull: too many requests wait for an instance (Retry-After)",
    "502": "Runtime.*, Function.Error, Function.OutOfMemory, Function.InvalidResponse, Instance.Crashed: the "
           "function failed; error.function holds its errorType, errorMessage and stackTrace",
    "503": "Activation.Timeout, Instance.PlacementFailed, Scheduler.Unavailable, Registry.Unavailable (Retry-After)",
    "504": "Function.Timeout: the function ran past timeout_s",
}
AUTH_ERRORS = ("401", "403")


def _op(summary: str, ok: dict, *errors: str, scope: str = "read", body: dict | None = None,
        params: list | None = None, op_id: str) -> dict:
    responses = dict(ok)
    for status in (*errors, *AUTH_ERRORS):
        responses[status] = _error(ERRORS[status])
    op = {"operationId": op_id, "summary": summary, "x-scope": scope, "responses": responses}
    if body is not None:
        op["requestBody"] = body
    if params:
        op["parameters"] = params
    return op


def _ok(status: str, description: str, schema: dict | None = None, content: dict | None = None) -> dict:
    out = {"description": description}
    if schema is not None:
        out["content"] = _json(schema)
    elif content is not None:
        out["content"] = content
    return {status: out}


def _query(name: str, schema: dict, description: str, required: bool = False) -> dict:
    """A query parameter. An optional one may also be given empty (``?since=&status=``, as a form
    sends it), which means not given."""
    if not required and schema.get("type") != "string":
        schema = {"anyOf": [schema, {"type": "string", "maxLength": 0}]}
        description += " (empty: not given)"
    return {"name": name, "in": "query", "required": required, "schema": schema, "description": description}


NAME_PARAM = {"name": "name", "in": "path", "required": True, "description": "the function's name",
              "schema": {"type": "string", "pattern": NAME_PATTERN}}
SINCE = _query("since", {"type": "number"}, "epoch seconds, or negative for seconds ago")
STATUS = _query("status", {"enum": [*STATUSES, ""]}, "only invocations that ended so (empty: any)")
VERSION = _query("version", {"type": "integer"}, "a code version (default: the current one)")


def _schemas() -> dict:
    config_props = {
        "name": {"type": "string", "pattern": NAME_PATTERN},
        "runtime": {"type": "string", "enum": list(RUNTIMES)},
        "handler": {"type": "string", "description": "module.function, e.g. index.handler"},
        "memory_mb": {"type": "integer", "minimum": MEMORY_MB[0], "maximum": MEMORY_MB[1]},
        "timeout_s": {"type": "integer", "minimum": TIMEOUT_S[0], "maximum": TIMEOUT_S[1]},
        "concurrency": {"type": "integer", "minimum": CONCURRENCY[0], "maximum": CONCURRENCY[1]},
        "max_instances": {"type": "integer", "minimum": MAX_INSTANCES[0], "maximum": MAX_INSTANCES[1]},
        "min_instances": {"type": "integer", "minimum": 0, "maximum": MAX_INSTANCES[1],
                          "description": "at most max_instances"},
        "keep_alive_s": {"type": "integer", "minimum": KEEP_ALIVE_S[0], "maximum": KEEP_ALIVE_S[1]},
        "environment": {"type": "object", "additionalProperties": {"type": "string"},
                        "description": "at most 4 KB; names of letters, digits and _; FAAS_, NOMAD_ and "
                                       "AWS_LAMBDA_ prefixes are reserved"},
        "description": {"type": "string", "maxLength": DESCRIPTION_MAX},
        "network": {"type": "string", "enum": list(NETWORK_MODES)},
    }
    settings = {k: v for k, v in config_props.items() if k != "name"}
    function = {"type": "object", "required": ["name", "runtime", "handler", "memory_mb", "timeout_s", "version"],
                "properties": {**config_props, "version": {"type": "integer", "minimum": 0},
                               "code_sha256": {"type": ["string", "null"]},
                               "created_at": {"type": "number"}, "updated_at": {"type": "number"}}}
    instance = {"type": "object", "required": ["id", "function", "version", "address"],
                "properties": {"id": {"type": "string"}, "function": {"type": "string"},
                               "version": {"type": "integer"}, "address": {"type": "string"},
                               "concurrency": {"type": "integer"}, "node": {"type": "string"},
                               "started_at": {"type": "number"}, "pid": {"type": ["integer", "null"]}}}
    trigger = {"type": "object", "required": ["method", "path", "function"],
               "properties": {"method": {"type": "string"}, "path": {"type": "string"},
                              "function": {"type": "string"}, "created_at": {"type": "number"}}}
    return {
        "Error": {"type": "object", "required": ["error"], "properties": {"error": {
            "type": "object", "required": ["code", "message"],
            "properties": {"code": {"type": "string", "description": "stable, e.g. Request.Invalid"},
                           "message": {"type": "string"}, "field": {"type": "string"},
                           "requestId": {"type": "string"},
                           "function": {"type": "object", "description": "the runtime's error (502, 504)"}}}}},
        "FunctionCreate": {"type": "object", "required": ["name"], "additionalProperties": False,
                           "properties": config_props},
        "FunctionUpdate": {"type": "object", "additionalProperties": False, "properties": settings,
                           "description": "fields left out keep their values; name, when given, must match"},
        "Function": function,
        "FunctionDetail": {"allOf": [function, {"type": "object", "properties": {
            "triggers": {"type": "array", "items": _ref("Trigger")},
            "instances": {"type": "array", "items": _ref("Instance")},
            "scaling": {"type": "object", "description": "this process's pool and the deciding edge's decision"}}}]},
        "CodeVersion": {"type": "object", "required": ["version", "digest", "size"],
                        "properties": {"version": {"type": "integer"}, "digest": {"type": "string"},
                                       "size": {"type": "integer"}, "files": {"type": "integer"},
                                       "unpacked_size": {"type": "integer"}, "created_at": {"type": "number"}}},
        "Instance": instance,
        "Trigger": trigger,
        "TriggerCreate": {"type": "object", "required": ["function", "method", "path"],
                          "properties": {"function": {"type": "string", "pattern": NAME_PATTERN},
                                         "method": METHOD_SCHEMA,
                                         "path": {"type": "string", "pattern": "^/",
                                                  "description": "/users/{id}, /files/{path+}"}}},
        "Invocation": {"type": "object", "required": ["request_id", "function", "status"], "properties": {
            "seq": {"type": "integer"}, "edge": {"type": "string"}, "request_id": {"type": "string"},
            "function": {"type": "string"}, "version": {"type": "integer"}, "started_at": {"type": "number"},
            "duration_ms": {"type": "number"}, "run_ms": {"type": "number"}, "billed_gb_s": {"type": "number"},
            "memory_mb": {"type": "integer"}, "cold": {"type": "boolean"},
            "cold_cause": {"type": ["string", "null"]}, "init_ms": {"type": "number"},
            "status": {"type": "string", "enum": list(STATUSES)}, "http_status": {"type": "integer"},
            "error_type": {"type": ["string", "null"]}, "error_message": {"type": ["string", "null"]},
            "instance_id": {"type": ["string", "null"]}, "trigger": {"type": ["string", "null"]},
            "phases": {"type": "object", "additionalProperties": {"type": "number"}},
            "logs": {"type": "array", "items": {"type": "string"}}}},
        "Usage": {"type": "object", "required": ["function", "invocations"], "properties": {
            "function": {"type": "string"}, "invocations": {"type": "integer"}, "gb_seconds": {"type": "number"},
            "cold_starts": {"type": "integer"}, "errors": {"type": "integer"},
            "avg_duration_ms": {"type": "number"}}},
    }


def _listing(key: str, item: dict) -> dict:
    return {"type": "object", "required": [key], "properties": {key: {"type": "array", "items": item}}}


def document(server_url: str | None = None, *, auth_required: bool = True) -> dict:
    """The OpenAPI 3.1 document of the control API (``server_url``: where it is served).

    Bearer auth is always declared; ``auth_required=False`` (a server that does not enforce API
    tokens) adds the empty requirement, so the document does not claim a 401 the server never gives."""
    name = [NAME_PARAM]
    code_body = {"required": True, "content": {
        "application/zip": {"schema": {"type": "string", "format": "binary"}},
        "application/octet-stream": {"schema": {"type": "string", "format": "binary",
                                                "description": "a zip, or one source file named by ?filename="}},
        "multipart/form-data": {"schema": {"type": "object", "required": ["code"], "properties": {
            "code": {"type": "string", "format": "binary"}}}},
        "application/json": {"schema": {"type": "object", "required": ["files"], "properties": {
            "files": {"type": "object", "minProperties": 1, "additionalProperties": {"type": "string"}}}}},
    }}
    upload = _op("Upload code: a new immutable version the function points at", _ok("201", "the new version", {
        "type": "object", "required": ["function", "version", "warnings"],
        "properties": {"function": _ref("Function"), "version": _ref("CodeVersion"),
                       "warnings": {"type": "array", "items": {"type": "string"}}}}),
        "400", "404", "409", "413", scope="write", body=code_body, op_id="uploadCode",
        params=name + [_query("filename", {"type": "string"}, "the body is this one source file (index.py)")])
    update_body = {"required": True, "content": _json(_ref("FunctionUpdate"))}
    update = ("Change a function's settings (fields left out keep their values)",
              _ok("200", "the function", _ref("Function")))
    paths = {
        "/v1/health": {"get": _op("Health of the control plane", _ok("200", "healthy", {
            "type": "object", "required": ["status", "role"],  # the rest only with a token
            "properties": {"status": {"type": "string"}, "role": {"type": "string"}, "mode": {"type": "string"},
                           "notes": {"type": "array", "items": {"type": "string"}},
                           "edge_port": {"type": ["integer", "null"]}, "seccomp": {"type": ["string", "null"]}}}),
            op_id="health")},
        "/v1/openapi.json": {"get": _op("This document", _ok("200", "the OpenAPI 3.1 document", {"type": "object"}),
                                        op_id="openapi")},
        "/metrics": {"get": _op("Prometheus metrics (text format 0.0.4)", _ok("200", "metrics", content={
            "text/plain": {"schema": {"type": "string"}}}), op_id="metrics")},
        "/v1/functions": {
            "get": _op("List functions", _ok("200", "every function", _listing("functions", _ref("Function"))),
                       op_id="listFunctions"),
            "post": _op("Create a function", _ok("201", "created", _ref("Function")), "400", "409", "413",
                        scope="write", body={"required": True, "content": _json(_ref("FunctionCreate"))},
                        op_id="createFunction"),
        },
        "/v1/functions/{name}": {
            "get": _op("A function with its triggers, instances and scaling state",
                       _ok("200", "the function", _ref("FunctionDetail")), "400", "404", params=name,
                       op_id="getFunction"),
            "put": _op(*update, "400", "404", "409", "413", scope="write", body=update_body, params=name,
                       op_id="putFunction"),
            "patch": _op(*update, "400", "404", "409", "413", scope="write", body=update_body, params=name,
                         op_id="patchFunction"),
            "delete": _op("Delete a function, its triggers and instances", _ok("200", "deleted", {
                "type": "object", "required": ["deleted"], "properties": {"deleted": {"type": "string"}}}),
                "400", "404", scope="write", params=name, op_id="deleteFunction"),
        },
        "/v1/functions/{name}/code": {
            "get": _op("Download a version's code package", _ok("200", "the zip", content={
                "application/zip": {"schema": {"type": "string", "format": "binary"}}}), "400", "404",
                params=name + [VERSION], op_id="downloadCode"),
            "put": upload,
            "post": {**upload, "operationId": "uploadCodePost"},
        },
        "/v1/functions/{name}/files": {"get": _op(
            "A version's text files, for the online editor", _ok("200", "files", {
                "type": "object", "required": ["version", "files", "omitted"],
                "properties": {"version": {"type": "integer"},
                               "files": {"type": "object", "additionalProperties": {"type": "string"}},
                               "omitted": {"type": "array", "items": {"type": "string"}}}}),
            "400", "404", params=name + [VERSION], op_id="getFiles")},
        "/v1/functions/{name}/versions": {"get": _op(
            "Code versions", _ok("200", "versions", _listing("versions", _ref("CodeVersion"))), "400", "404",
            params=name, op_id="listVersions")},
        "/v1/functions/{name}/invocations": {
            "post": _op("Invoke; the body is the event", {"200": {
                "description": "the function's result as JSON; Server-Timing has the phases",
                "content": _json({})}}, "400", "404", "409", "413", "429", "502", "503", "504", scope="write",
                body={"required": False, "content": _json({})}, params=name, op_id="invoke"),
            "get": _op("Invocation records, newest first", _ok("200", "records",
                                                                _listing("invocations", _ref("Invocation"))),
                       "400", "404", op_id="listInvocations", params=name + [
                           SINCE, STATUS, _query("limit", {"type": "integer", "minimum": 1, "maximum": 1000},
                                                 "at most this many (default 50)"),
                           _query("request_id", {"type": "string"}, "only this request")]),
        },
        "/v1/functions/{name}/logs": {"get": _op(
            "Log lines per invocation (START, the function's output, END)", _ok("200", "lines", {
                "type": "object", "required": ["lines", "next"], "properties": {
                    "lines": {"type": "array", "items": {"type": "object", "required": ["line"], "properties": {
                        "seq": {"type": "integer"}, "request_id": {"type": "string"}, "ts": {"type": "number"},
                        "line": {"type": "string"}}}},
                    "next": {"type": "string", "description": "give as ?after= to follow"}}}),
            "400", "404", op_id="getLogs", params=name + [
                SINCE, STATUS, _query("limit", {"type": "integer", "minimum": 1, "maximum": 1000},
                                      "at most this many invocations (default 100)"),
                _query("after", {"type": "string"}, "the next of the previous answer")])},
        "/v1/functions/{name}/instances": {"get": _op(
            "Running instances", _ok("200", "instances", _listing("instances", _ref("Instance"))), "400", "404",
            params=name, op_id="listInstances")},
        "/v1/functions/{name}/triggers": {"post": _op(
            "Bind an HTTP trigger to this function", _ok("201", "bound", _ref("Trigger")), "400", "404", "409",
            scope="write", params=name, op_id="addFunctionTrigger", body={"required": True, "content": _json({
                "type": "object", "required": ["path"], "properties": {
                    "method": {**METHOD_SCHEMA, "default": "GET"},
                    "path": {"type": "string", "pattern": "^/"}}})})},
        "/v1/usage": {"get": _op("Invocations, errors, cold starts and GB-seconds per function", _ok(
            "200", "usage", _listing("usage", _ref("Usage"))), "400", "404", op_id="usage", params=[
            SINCE, _query("function", {"type": "string"}, "only this function")])},
        "/v1/triggers": {
            "get": _op("HTTP triggers", _ok("200", "triggers", _listing("triggers", _ref("Trigger"))),
                       op_id="listTriggers", params=[_query("function", {"type": "string"}, "only this function's")]),
            "post": _op("Bind an HTTP trigger", _ok("201", "bound", _ref("Trigger")), "400", "404", "409",
                        scope="write", body={"required": True, "content": _json(_ref("TriggerCreate"))},
                        op_id="addTrigger"),
            "delete": _op("Remove an HTTP trigger", _ok("200", "removed", {
                "type": "object", "required": ["deleted"], "properties": {"deleted": _ref("Trigger")}}),
                "400", "404", scope="write", op_id="removeTrigger", params=[
                    _query("method", METHOD_SCHEMA, "the trigger's method",
                           required=True),
                    _query("path", {"type": "string", "pattern": "^/"}, "the trigger's path", required=True)]),
        },
    }
    doc = {
        "openapi": "3.1.0",
        "info": {"title": "FaaS Appliance control API", "version": "1",
                 "description": "Functions, code, triggers, invocations, logs and usage. Errors are "
                                '{"error": {"code", "message", "requestId", ...}} with stable codes; every '
                                "answer carries X-Request-Id."},
        "security": [{"bearerAuth": []}] if auth_required else [{"bearerAuth": []}, {}],
        "paths": paths,
        "components": {"schemas": _schemas(), "securitySchemes": {
            "bearerAuth": {"type": "http", "scheme": "bearer",
                           "description": "an API token: Authorization: Bearer <token>"}}},
    }
    if server_url:
        doc["servers"] = [{"url": server_url}]
    return doc
