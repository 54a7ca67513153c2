"""The control API's contract: an OpenAPI 3.1 document, served at ``GET /v1/openapi.json``.

Written by hand next to the routes rather than generated from them, because what a client needs
(every error code and status an operation can answer, the bodies' shapes and bounds) is not in the
Flask routes. Two tests keep it honest: ``tests/unit/test_openapi.py`` fails when a route and the
document disagree (a path or method only on one side), and ``tests/integration/test_openapi_conformance.py``
runs schemathesis against a live appliance: no 5xx where none is documented, every answer matching
the document.

Request schemas are never stricter than the server: a value the document calls invalid must be
refused (schemathesis sends such values and expects a 4xx), so a field the server takes as ``null``
(meaning "the default") is declared nullable. The server may refuse more than the document says
(a name already taken, a zip's content): those refusals are 4xx with a stable code.

Auth (appliance/control/auth.py): every operation but ``GET /v1/health`` requires the bearer scheme
(API tokens). ``x-scope`` is the action the operation needs (read, records, invoke, deploy, admin)
and ``x-token-scopes`` the token scopes that allow it (appliance/core/tokens.py). The guard's
answers come before any view: 401 (no or a bad token), 403 (scope, or a foreign Origin), 421 (a
Host this appliance does not serve) and, for a body of the wrong media type, 415.
"""

from __future__ import annotations

from appliance.core.async_invoke import MAX_EVENT_AGE_S, MAX_RETRY_ATTEMPTS
from appliance.core.async_invoke import STATES as EVENT_STATES
from appliance.core.model import (
    CONCURRENCY,
    DESCRIPTION_MAX,
    HANDLER_RE,
    KEEP_ALIVE_S,
    MAX_INSTANCES,
    MAX_LAYERS,
    MEMORY_MB,
    NETWORK_MODES,
    SNAPSHOT_MODES,
    RUNTIMES,
    TIMEOUT_S,
)
from appliance.core.queue_source import BATCH_SIZE, BATCHING_WINDOW_S, MAX_CONCURRENCY, VISIBILITY_TIMEOUT_S
from appliance.core.records import STATUSES
from appliance.core.tokens import ACTIONS, SCOPES

NAME_PATTERN = r"^[a-z](?:[a-z0-9-]{0,58}[a-z0-9])?$"
#: A target: NAME, NAME:$LATEST, NAME:VERSION or NAME:ALIAS (README "Versions and aliases").
TARGET_PATTERN = r"^[a-z](?:[a-z0-9-]{0,58}[a-z0-9])?(:(\$LATEST|[A-Za-z0-9_-]{1,128}))?$"
ALIAS_PATTERN = r"^[A-Za-z0-9_-]{1,128}$"
TOKEN_NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,62}$"
TOKEN_FUNCTIONS_PATTERN = r"^[a-z0-9*?\[\]!-]{1,64}$"
KEY_NAME_PATTERN = r"^[a-z0-9][a-z0-9-]{0,39}$"
QUEUE_PATTERN = r"^[A-Za-z0-9_-]{1,80}$"
LAYER_REF_PATTERN = r"^[a-z](?:[a-z0-9-]{0,58}[a-z0-9])?:[1-9][0-9]{0,8}$"
TRIGGER_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "ANY"]
#: The API takes a trigger's method in any case (get, GET).
METHOD_SCHEMA = {"type": "string", "pattern": "^(" + "|".join(
    "".join(f"[{c.upper()}{c.lower()}]" for c in m) for m in TRIGGER_METHODS) + ")$",
    "description": "GET, POST, PUT, PATCH, DELETE, HEAD, OPTIONS or ANY (any case)"}
#: ``?type=`` of an invocation, in any case (empty: the header decides).
INVOKE_TYPE_PATTERN = "^(|" + "|".join("".join(f"[{c.upper()}{c.lower()}]" for c in w)
                                       for w in ("event", "async", "requestresponse", "sync")) + ")$"
PUBLIC = "none"


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict) -> dict:
    return {"application/json": {"schema": schema}}


def _error(description: str) -> dict:
    return {"description": description, "content": _json(_ref("Error"))}


#: Error answers by status; each operation lists the ones it can give.
ERRORS = {
    "400": "Request.Invalid, Code.Unsafe, Code.SyntaxError, Code.HandlerNotFound: a field, the body or a code "
           "package is invalid (error.field names it)",
    "401": "Auth.Required (no token), Auth.InvalidToken (unknown, revoked or expired); WWW-Authenticate: Bearer",
    "403": "Auth.Forbidden (the token's scope or function pattern does not allow it), Auth.ForeignOrigin "
           "(a request from another web origin)",
    "404": "Function.NotFound, Trigger.NotFound, Code.NotFound, Resource.NotFound, Route.NotFound, "
           "Version.NotFound, Alias.NotFound",
    "409": "Resource.Conflict, Resource.RevisionConflict, Function.NoCode, Version.InUse, Alias.InUse",
    "413": "Request.TooLarge: the body is over the limit",
    "415": "Request.UnsupportedMediaType: the body's Content-Type is not one the operation reads",
    "421": "Request.BadHost: the Host header names no host this appliance serves (APPLIANCE_ALLOWED_HOSTS)",
    "429": "Activation.QueueFull, Async.QueueFull, Queue.Full: too much waits already (Retry-After)",
    "502": "Runtime.*, Function.Error, Function.OutOfMemory, Function.InvalidResponse, Instance.Crashed: the "
           "function failed; error.function holds its errorType, errorMessage and stackTrace",
    "501": "Version.Unsupported: this appliance's scheduler cannot run published versions apart from $LATEST",
    "503": "Activation.Timeout, Instance.PlacementFailed, Scheduler.Unavailable, Registry.Unavailable (Retry-After)",
    "504": "Function.Timeout: the function ran past timeout_s",
}
#: What the guard answers before any view runs.
AUTH_ERRORS = ("401", "403", "421")
#: Methods whose body the guard or the view checks for its media type.
BODY_METHODS = ("post", "put", "patch")


def token_scopes(action: str) -> list[str]:
    """The token scopes whose actions include ``action`` (appliance/core/tokens.py ACTIONS)."""
    return [s for s in SCOPES if action in ACTIONS[s]]


def _op(summary: str, ok: dict, *errors: str, scope: str, body: dict | None = None,
        params: list | None = None, op_id: str) -> dict:
    responses = dict(ok)
    extra = ("415",) if body is not None else ()
    for status in sorted({*errors, *AUTH_ERRORS, *extra}):
        responses[status] = _error(ERRORS[status])
    op = {"operationId": op_id, "summary": summary, "x-scope": scope,
          "x-token-scopes": token_scopes(scope) if scope != PUBLIC else [], "responses": responses}
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


def _path(name: str, schema: dict, description: str) -> dict:
    return {"name": name, "in": "path", "required": True, "schema": schema, "description": description}


def _body(schema: dict, required: bool = True) -> dict:
    return {"required": required, "content": _json(schema)}


def _obj(required: list[str], **props) -> dict:
    return {"type": "object", "required": required, "properties": props}


NAME_PARAM = _path("name", {"type": "string", "pattern": NAME_PATTERN}, "the function's name")
SINCE = _query("since", {"type": "number"}, "epoch seconds, or negative for seconds ago")
STATUS = _query("status", {"enum": [*STATUSES, ""]}, "only invocations that ended so (empty: any)")
VERSION = _query("version", {"type": "integer"}, "a code version (default: the current one)")
LIMIT = _query("limit", {"type": "integer", "minimum": 1, "maximum": 1000}, "at most this many (default 10)")
STRING = {"type": "string"}
NUMBER = {"type": "number"}
INTEGER = {"type": "integer"}
BOOL = {"type": "boolean"}
NULLABLE_STRING = {"type": ["string", "null"]}
ZIP = {"type": "string", "format": "binary"}


def _schemas() -> dict:
    destination = {"anyOf": [{"type": "null"}, {"type": "object", "maxProperties": 0}, {
        "type": "object", "minProperties": 1, "maxProperties": 1, "properties": {
            "function": {"type": "string", "pattern": NAME_PATTERN},
            "url": {"type": "string", "pattern": "^https?://", "maxLength": 2048},
            "queue": {"type": "string", "maxLength": 2048}}, "additionalProperties": False}],
        "description": '{"function": NAME}, {"url": "https://..."} or {"queue": NAME or SQS URL}; null or {} clears'}
    config_props = {
        "name": {"type": "string", "pattern": NAME_PATTERN},
        "runtime": {"type": "string", "enum": list(RUNTIMES)},
        "handler": {"type": "string", "pattern": HANDLER_RE.pattern,
                    "description": "module.function, e.g. index.handler (no '..')"},
        "memory_mb": {"type": "integer", "minimum": MEMORY_MB[0], "maximum": MEMORY_MB[1]},
        "timeout_s": {"type": "integer", "minimum": TIMEOUT_S[0], "maximum": TIMEOUT_S[1]},
        "concurrency": {"type": "integer", "minimum": CONCURRENCY[0], "maximum": CONCURRENCY[1]},
        "max_instances": {"type": "integer", "minimum": MAX_INSTANCES[0], "maximum": MAX_INSTANCES[1]},
        "min_instances": {"type": "integer", "minimum": 0, "maximum": MAX_INSTANCES[1],
                          "description": "at most max_instances"},
        "keep_alive_s": {"type": "integer", "minimum": KEEP_ALIVE_S[0], "maximum": KEEP_ALIVE_S[1]},
        "environment": {"type": ["object", "null"], "additionalProperties": {"type": "string"},
                        "description": "at most 4 KB; names of letters, digits and _; FAAS_, NOMAD_ and "
                                       "AWS_LAMBDA_ prefixes are reserved"},
        "secrets": {"type": ["object", "null"], "additionalProperties": {"type": "string"},
                    "description": "like environment, but sealed at rest and shown masked; at most 4 KB"},
        "expose_errors": {"type": ["boolean", "null"],
                          "description": "show the function's stack trace to HTTP callers (default false)"},
        "description": {"type": ["string", "null"], "maxLength": DESCRIPTION_MAX},
        "network": {"enum": [*NETWORK_MODES, None]},
        "snapshot": {"enum": [*SNAPSHOT_MODES, None],
                     "description": "auto: Python cold starts fork from an initialised template of the version"},
        "layers": {"type": ["array", "null"], "maxItems": MAX_LAYERS,
                   "items": {"type": "string", "pattern": LAYER_REF_PATTERN}, "description": "NAME:VERSION, each once"},
        "async": {"type": ["object", "null"], "additionalProperties": False,
                  "description": "asynchronous invocation: retries, event age and destinations",
                  "properties": {
                      "max_retry_attempts": {"type": ["integer", "null"], "minimum": MAX_RETRY_ATTEMPTS[0],
                                             "maximum": MAX_RETRY_ATTEMPTS[1]},
                      "max_event_age_s": {"type": ["integer", "null"], "minimum": MAX_EVENT_AGE_S[0],
                                          "maximum": MAX_EVENT_AGE_S[1]},
                      "on_success": destination, "on_failure": destination}},
        "min_instances_schedule": {
            "type": ["array", "null"], "description": "scheduled min_instances (cron(...) in a time zone)",
            "items": {"type": "object", "required": ["schedule", "min_instances"], "additionalProperties": False,
                      "properties": {"schedule": {"type": "string", "pattern": r"^\s*cron\("},
                                     "min_instances": {"type": "integer", "minimum": 0,
                                                       "maximum": MAX_INSTANCES[1]},
                                     "timezone": {"type": "string"}}}},
    }
    function = {"type": "object", "required": ["name", "runtime", "handler", "memory_mb", "timeout_s", "version"],
                "properties": {
                    **{k: v for k, v in config_props.items() if k not in ("async", "min_instances_schedule")},
                    "async": {"type": "object"}, "min_instances_schedule": {"type": "array"},
                    "version": {"type": "integer", "minimum": 0}, "code_sha256": NULLABLE_STRING,
                    "created_at": NUMBER, "updated_at": NUMBER}}
    instance = _obj(["id", "function", "version", "address"], id=STRING, function=STRING, version=INTEGER,
                    address=STRING, concurrency=INTEGER, node=STRING, started_at=NUMBER,
                    pid={"type": ["integer", "null"]},
                    executed_version={"type": "string", "description": "$LATEST or the published version it runs"})
    trigger = _obj(["method", "path", "function"], method=STRING, path=STRING, function=STRING,
                   created_at=NUMBER, invocation={"enum": ["sync", "async"]}, auth={"type": "object"},
                   cors={"type": ["object", "null"]})
    event_trigger = _obj(["id", "kind", "function"], id=STRING, kind={"enum": ["schedule", "queue"]},
                         function=STRING, created_at=NUMBER, enabled=BOOL)
    queue_settings = {
        "batch_size": {"type": "integer", "minimum": BATCH_SIZE[0], "maximum": BATCH_SIZE[1]},
        "batching_window_s": {"type": "integer", "minimum": BATCHING_WINDOW_S[0], "maximum": BATCHING_WINDOW_S[1]},
        "max_concurrency": {"type": "integer", "minimum": MAX_CONCURRENCY[0], "maximum": MAX_CONCURRENCY[1]},
        "visibility_timeout_s": {"type": "integer", "minimum": VISIBILITY_TIMEOUT_S[0],
                                 "maximum": VISIBILITY_TIMEOUT_S[1]},
        "report_batch_item_failures": BOOL, "enabled": BOOL}
    schedule_settings = {"schedule": {"type": "string", "description": "rate(5 minutes), cron(0 8 * * ? *), at(...)"},
                         "timezone": {"type": "string", "description": "IANA name (default UTC)"},
                         "enabled": BOOL, "event": {"description": "the constant event (JSON, at most 256 KB); "
                                                                    "default EventBridge's Scheduled Event"}}
    layer = _obj(["name", "version", "ref", "digest", "size"], name=STRING, version=INTEGER, ref=STRING,
                 digest=STRING, size=INTEGER, files=INTEGER, unpacked_size=INTEGER, created_at=NUMBER,
                 description=STRING, used_by={"type": "array", "items": STRING})
    token = _obj(["name", "scope"], name=STRING, scope={"enum": list(SCOPES)}, functions=NULLABLE_STRING,
                 created_at=NUMBER, expires_at={"type": ["number", "null"]}, created_by=STRING)
    return {
        "Error": {"type": "object", "required": ["error"], "properties": {"error": {
            "type": "object", "required": ["code", "message"],
            "properties": {"code": {"type": "string", "description": "stable, e.g. Request.Invalid"},
                           "message": STRING, "field": STRING, "requestId": STRING,
                           "function": {"type": "object", "description": "the runtime's error (502, 504)"}}}}},
        "FunctionCreate": {"type": "object", "required": ["name"], "additionalProperties": False,
                           "properties": config_props},
        "FunctionUpdate": {"type": "object", "additionalProperties": False, "properties": config_props,
                           "description": "fields left out keep their values; name, when given, must match"},
        "Function": function,
        "FunctionDetail": {"allOf": [function, {"type": "object", "properties": {
            "triggers": {"type": "array", "items": {"anyOf": [_ref("Trigger"), _ref("EventTrigger")]}},
            "instances": {"type": "array", "items": _ref("Instance")},
            "snapshot_unavailable": {"type": "string",
                                     "description": "with snapshot auto: why cold starts here cannot fork from one"},
            "snapshots": {"type": "array", "description": "this host's snapshot templates, one per version tried",
                          "items": {"type": "object", "properties": {
                              "version": INTEGER, "published": {"type": ["integer", "null"]},
                              "state": {"enum": ["building", "ready", "refused", "failed",
                                                                      "dropping", "dropped"]},
                              "reason": {"type": ["string", "null"]}, "forks": INTEGER, "memory_bytes": INTEGER,
                              "init_ms": {"type": ["number", "null"]}, "instances": INTEGER,
                              "pid": {"type": ["integer", "null"]}}}},
            "scaling": {"type": "object", "description": "this process's pool and the deciding edge's decision"},
            "queue_sources": {"description": "this process's pollers of each queue trigger"},
            "min_instances_in_force": {"type": "object"},
            "published": {"type": "array", "items": INTEGER, "description": "published version numbers"},
            "aliases": {"type": "array", "items": _ref("Alias")}}}]},
        "CodeVersion": _obj(["version", "digest", "size"], version=INTEGER, digest=STRING, size=INTEGER,
                            files=INTEGER, unpacked_size=INTEGER, created_at=NUMBER),
        "Instance": instance,
        "Trigger": trigger,
        "EventTrigger": event_trigger,
        "HttpTriggerCreate": {
            "type": "object", "required": ["function", "method", "path"], "properties": {
                "kind": {"const": "http"}, "function": {"type": "string", "pattern": TARGET_PATTERN},
                "method": METHOD_SCHEMA,
                "path": {"type": "string", "pattern": "^/", "description": "/users/{id}, /files/{path+}"},
                "invocation": {"enum": ["sync", "async", "", None], "description": "async: answer 202 at once"},
                "auth": {"type": ["object", "string", "null"], "description": '{"type": "none"|"bearer"|"hmac"|"jwt", '
                                                                            "...} (jwt: issuer, audience, keys)"},
                "cors": {"type": ["object", "null"], "description": "allow_origins, allow_methods, allow_headers, "
                                                                     "expose_headers, max_age, allow_credentials"}}},
        "ScheduleTriggerCreate": {
            "type": "object", "required": ["kind", "function", "schedule"], "additionalProperties": False,
            "properties": {"kind": {"const": "schedule"}, "function": {"type": "string", "pattern": TARGET_PATTERN},
                           **schedule_settings}},
        "QueueTriggerCreate": {
            "type": "object", "required": ["kind", "function", "queue"], "additionalProperties": False,
            "properties": {"kind": {"const": "queue"}, "function": {"type": "string", "pattern": TARGET_PATTERN},
                           "queue": {"type": "string", "maxLength": 2048,
                                     "description": "an embedded queue's name, or an SQS queue URL"},
                           **queue_settings}},
        "EventTriggerUpdate": {
            "type": "object", "additionalProperties": False, "description": "a schedule's schedule, timezone, "
            "enabled or event (null: the default); a queue trigger's settings (its queue stays)",
            "properties": {**schedule_settings, **queue_settings}},
        "TriggerKey": _obj(["name", "type", "method", "path", "function"], name=STRING,
                           type={"enum": ["bearer", "hmac"]}, hint=STRING, created_at=NUMBER, method=STRING,
                           path=STRING, function=STRING),
        "Layer": layer,
        "Token": token,
        "Invocation": {"type": "object", "required": ["request_id", "function", "status"], "properties": {
            "seq": INTEGER, "edge": STRING, "request_id": STRING,
            "function": STRING, "version": INTEGER, "started_at": NUMBER,
            "duration_ms": NUMBER, "run_ms": NUMBER, "billed_gb_s": NUMBER,
            "memory_mb": INTEGER, "cold": BOOL, "cold_cause": NULLABLE_STRING, "init_ms": NUMBER,
            "status": {"type": "string", "enum": list(STATUSES)}, "http_status": INTEGER,
            "error_type": NULLABLE_STRING, "error_message": NULLABLE_STRING,
            "instance_id": NULLABLE_STRING, "trigger": NULLABLE_STRING,
            "phases": {"type": "object", "additionalProperties": NUMBER},
            "logs": {"type": "array", "items": STRING},
            "executed_version": {"type": "string", "description": "$LATEST or the published version that ran"},
            "alias": {"type": ["string", "null"], "description": "the alias it was called through"}}},
        "PublishedVersion": _obj(["function", "version", "code_version", "code_sha256", "config"], function=STRING,
                                 version=INTEGER, code_version=INTEGER, code_sha256=STRING, description=STRING,
                                 created_at=NUMBER, config={"type": "object",
                                                            "description": "the settings, secrets masked"}),
        "Alias": _obj(["name", "function", "version", "weights"], name=STRING, function=STRING, version=INTEGER,
                      weights={"type": "object", "additionalProperties": NUMBER,
                               "description": '{"M": share}: at most one other version and its share in (0, 1)'},
                      description=STRING, updated_at=NUMBER),
        "AliasPut": {"type": "object", "required": ["version"], "properties": {
            "version": {"anyOf": [{"type": "integer", "minimum": 1}, {"type": "string", "pattern": "^[1-9][0-9]*$"}]},
            "weights": {"type": ["object", "null"], "maxProperties": 1,
                        "additionalProperties": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1}},
            "description": {"type": ["string", "null"], "maxLength": 256},
            "name": STRING, "function": STRING}},
        "Usage": _obj(["function", "invocations"], function=STRING, invocations=INTEGER, gb_seconds=NUMBER,
                      cold_starts=INTEGER, errors=INTEGER, avg_duration_ms=NUMBER),
    }


def _listing(key: str, item: dict) -> dict:
    return {"type": "object", "required": [key], "properties": {key: {"type": "array", "items": item}}}


def _paths() -> dict:
    name = [NAME_PARAM]
    code_body = {"required": True, "content": {
        "application/zip": {"schema": ZIP},
        "application/octet-stream": {"schema": {**ZIP, "description": "a zip, or one source file named by ?filename="}},
        "multipart/form-data": {"schema": {"type": "object", "required": ["code"], "properties": {"code": ZIP}}},
        "application/json": {"schema": {"type": "object", "required": ["files"], "properties": {
            "files": {"type": "object", "minProperties": 1, "additionalProperties": {"type": "string"}}}}},
    }}
    upload = _op("Upload code: a new immutable version the function points at", _ok("201", "the new version", _obj(
        ["function", "version", "warnings"], function=_ref("Function"), version=_ref("CodeVersion"),
        warnings={"type": "array", "items": STRING})),
        "400", "404", "409", "413", scope="deploy", body=code_body, op_id="uploadCode",
        params=name + [_query("filename", STRING, "the body is this one source file (index.py)")])
    update_body = _body(_ref("FunctionUpdate"))
    update = ("Change a function's settings (fields left out keep their values)",
              _ok("200", "the function", _ref("Function")))
    layer_name = _path("name", {"type": "string", "pattern": NAME_PATTERN}, "the layer's name")
    layer_body = {"required": True, "content": {
        "application/zip": {"schema": ZIP}, "application/octet-stream": {"schema": ZIP},
        "multipart/form-data": {"schema": {"type": "object", "properties": {"layer": ZIP}}}}}
    publish = _op("Publish a layer's next version (a zip, unpacked on top of /opt)",
                  _ok("201", "the new version", _ref("Layer")), "400", "404", "409", "413", scope="deploy",
                  body=layer_body, op_id="publishLayer",
                  params=[layer_name, _query("description", STRING, "what the version holds")])
    trigger_args = [_query("method", METHOD_SCHEMA, "the trigger's method", required=True),
                    _query("path", {"type": "string", "pattern": "^/"}, "the trigger's path", required=True)]
    invoke_ok = {
        "200": {"description": "the function's result as JSON; Server-Timing has the phases, X-Faas-Cold-Start "
                               "says whether an instance was started", "content": _json({})},
        "202": {"description": "an Event invocation: the event is durably queued (retries and destinations as "
                               "the function's async settings say)", "content": _json(_obj(
                                   ["requestId", "status"], requestId=STRING,
                                   status={"enum": ["queued", "already-accepted"]}))}}
    return {
        "/v1/health": {"get": {**_op("Health of the control plane (details only with a token)", _ok(
            "200", "healthy", _obj(["status", "role"], status=STRING, role=STRING, mode=STRING,
                                   notes={"type": "array", "items": STRING}, edge_port={"type": ["integer", "null"]},
                                   seccomp=NULLABLE_STRING, instance_network={}, instance_uids={"type": "array"})),
            scope=PUBLIC, op_id="health"), "security": [{}, {"bearerAuth": []}]}},
        "/v1/openapi.json": {"get": _op("This document", _ok("200", "the OpenAPI 3.1 document", {"type": "object"}),
                                        scope="read", op_id="openapi")},
        "/metrics": {"get": _op("Prometheus metrics (text format 0.0.4)", _ok("200", "metrics", content={
            "text/plain": {"schema": STRING}}), scope="read", op_id="metrics")},
        "/v1/tokens": {
            "get": _op("API tokens (never their secrets)", _ok("200", "tokens", _listing("tokens", _ref("Token"))),
                       scope="admin", op_id="listTokens"),
            "post": _op("Make a token; the answer is the only place its secret ever appears", _ok(
                "201", "the token, with its secret in token", {"allOf": [_ref("Token"), _obj(["token"], token=STRING)]}),
                "400", "409", "413", scope="admin", op_id="createToken", body=_body({
                    "type": "object", "required": ["name", "scope"], "additionalProperties": False, "properties": {
                        "name": {"type": "string", "pattern": TOKEN_NAME_PATTERN},
                        "scope": {"enum": list(SCOPES)},
                        "functions": {"type": ["string", "null"], "pattern": TOKEN_FUNCTIONS_PATTERN,
                                      "description": "a glob of function names (deploy and invoke scopes only)"},
                        "expires": {"anyOf": [{"type": "null"}, {"type": "number", "exclusiveMinimum": 0},
                                              {"type": "string", "pattern": r"^\s*[0-9]{1,6}[smhdw]\s*$"}],
                                    "description": "seconds, or 3600s, 90m, 12h, 30d, 2w"}}}))},
        "/v1/tokens/{name}": {"delete": _op("Revoke a token", _ok("200", "revoked", _obj(["revoked"],
                                                                                       revoked=_ref("Token"))),
                                            "404", scope="admin", op_id="revokeToken",
                                            params=[_path("name", STRING, "the token's name")])},
        "/v1/functions": {
            "get": _op("List functions", _ok("200", "every function", _listing("functions", _ref("Function"))),
                       scope="read", op_id="listFunctions"),
            "post": _op("Create a function", _ok("201", "created", _ref("Function")), "400", "404", "409", "413",
                        scope="deploy", body=_body(_ref("FunctionCreate")), op_id="createFunction"),
        },
        "/v1/functions/{name}": {
            "get": _op("A function with its triggers, instances and scaling state",
                       _ok("200", "the function", _ref("FunctionDetail")), "400", "404", scope="read", params=name,
                       op_id="getFunction"),
            "put": _op(*update, "400", "404", "409", "413", scope="deploy", body=update_body, params=name,
                       op_id="putFunction"),
            "patch": _op(*update, "400", "404", "409", "413", scope="deploy", body=update_body, params=name,
                         op_id="patchFunction"),
            "delete": _op("Delete a function, its triggers and instances", _ok("200", "deleted", _obj(
                ["deleted"], deleted=STRING)), "400", "404", scope="deploy", params=name, op_id="deleteFunction"),
        },
        "/v1/functions/{name}/code": {
            "get": _op("Download a version's code package", _ok("200", "the zip", content={
                "application/zip": {"schema": ZIP}}), "400", "404", scope="read",
                params=name + [VERSION], op_id="downloadCode"),
            "put": upload,
            "post": {**upload, "operationId": "uploadCodePost"},
        },
        "/v1/functions/{name}/files": {"get": _op(
            "A version's text files, for the online editor", _ok("200", "files", _obj(
                ["version", "files", "omitted"], version=INTEGER,
                files={"type": "object", "additionalProperties": STRING},
                omitted={"type": "array", "items": STRING})),
            "400", "404", scope="read", params=name + [VERSION], op_id="getFiles")},
        "/v1/functions/{name}/versions": {"get": _op(
            "Code versions", _ok("200", "versions", _listing("versions", _ref("CodeVersion"))), "400", "404",
            scope="read", params=name, op_id="listVersions")},
        "/v1/functions/{name}/invocations": {
            "post": _op("Invoke; the body is the event. Event invocations (X-Amz-Invocation-Type: Event or "
                        "?type=event) answer 202 once the event is queued. The name may carry a qualifier "
                        "(NAME:VERSION, NAME:ALIAS); X-Amz-Executed-Version says which version ran", invoke_ok,
                        "400", "404", "409", "413", "429", "501", "502", "503", "504", scope="invoke",
                        body={"required": False, "content": _json({})}, op_id="invoke", params=[
                            _path("name", {"type": "string", "pattern": TARGET_PATTERN},
                                  "the function's name, optionally :VERSION, :ALIAS or :$LATEST"),
                            _query("qualifier", {"type": "string", "pattern": r"^(\$LATEST|[A-Za-z0-9_-]{1,128})?$"},
                                   "a published version, an alias or $LATEST (not with a qualified name)"),
                            _query("type", {"type": "string", "pattern": INVOKE_TYPE_PATTERN},
                                   "event (or async) queues the event; sync (or requestresponse) waits (any case)"),
                            {"name": "X-Amz-Invocation-Type", "in": "header", "required": False,
                             "schema": {"enum": ["Event", "RequestResponse", ""]},
                             "description": "Lambda's header; ?type= wins when both are given"}]),
            "get": _op("Invocation records, newest first", _ok("200", "records",
                                                                _listing("invocations", _ref("Invocation"))),
                       "400", "404", scope="records", op_id="listInvocations", params=name + [
                           SINCE, STATUS, _query("limit", {"type": "integer", "minimum": 1, "maximum": 1000},
                                                 "at most this many (default 50)"),
                           _query("request_id", STRING, "only this request")]),
        },
        "/v1/functions/{name}/events": {"get": _op(
            "Asynchronous events, newest first, and how many are in each state", _ok("200", "events", _obj(
                ["events", "counts"], events={"type": "array", "items": {"type": "object"}},
                counts={"type": "object", "additionalProperties": INTEGER})),
            "400", "404", scope="records", op_id="listEvents", params=[
                _path("name", {"type": "string", "pattern": TARGET_PATTERN},
                      "the function's name, or NAME:QUALIFIER for the events sent to a version or an alias"),
                _query("status", {"enum": [*EVENT_STATES, ""]}, "only events in this state (empty: any)"),
                _query("state", {"enum": [*EVENT_STATES, ""]}, "the same as status (status wins)"),
                _query("limit", {"type": "integer", "minimum": 1, "maximum": 1000}, "at most this many (default 50)")])},
        "/v1/functions/{name}/logs": {"get": _op(
            "Log lines per invocation (START, the function's output, END)", _ok("200", "lines", _obj(
                ["lines", "next"], lines={"type": "array", "items": _obj(
                    ["line"], seq=INTEGER, request_id=STRING, ts=NUMBER, line=STRING)},
                next={"type": "string", "description": "give as ?after= to follow"})),
            "400", "404", scope="records", op_id="getLogs", params=name + [
                SINCE, STATUS, _query("limit", {"type": "integer", "minimum": 1, "maximum": 1000},
                                      "at most this many invocations (default 100)"),
                _query("after", STRING, "the next of the previous answer")])},
        "/v1/functions/{name}/instances": {"get": _op(
            "Running instances", _ok("200", "instances", _listing("instances", _ref("Instance"))), "400", "404",
            scope="read", params=name, op_id="listInstances")},
        "/v1/functions/{name}/series": {"get": _op(
            "Chart points of the function over a window: always 60 buckets, whatever the traffic", _ok(
                "200", "points", {"type": "object"}), "400", "404",
            scope="records", params=name + [_query("window", {"enum": ["15m", "1h", "6h", "24h", "7d"]},
                                                   "the window the 60 buckets cover (default 1h)")],
            op_id="functionSeries")},
        "/v1/functions/{name}/triggers": {"post": _op(
            "Bind an HTTP trigger to this function", _ok("201", "bound", _ref("Trigger")), "400", "404", "409",
            scope="deploy", op_id="addFunctionTrigger", params=[
                _path("name", {"type": "string", "pattern": TARGET_PATTERN},
                      "the function's name, or NAME:VERSION / NAME:ALIAS")], body=_body({
                "type": "object", "required": ["path"], "properties": {
                    "method": {**METHOD_SCHEMA, "default": "GET"}, "path": {"type": "string", "pattern": "^/"},
                    "invocation": {"enum": ["sync", "async", "", None]},
                    "auth": {"type": ["object", "string", "null"]}, "cors": {"type": ["object", "null"]}}}))},
        "/v1/functions/{name}/publish": {"post": _op(
            "Publish a version: an immutable snapshot of the current code and settings (201), or the newest "
            "version when nothing changed since it (200)", {
                **_ok("201", "the new published version", _ref("PublishedVersion")),
                **_ok("200", "nothing changed: the newest published version", _ref("PublishedVersion"))},
            "400", "404", "409", "413", scope="deploy", params=name, op_id="publishVersion",
            body={"required": False, "content": _json({"type": "object", "additionalProperties": False,
                                                       "properties": {"description": {
                                                           "type": ["string", "null"], "maxLength": 256}}})})},
        "/v1/functions/{name}/published": {"get": _op(
            "Published versions, newest first", _ok("200", "versions", _listing("versions", _ref("PublishedVersion"))),
            "400", "404", scope="read", params=name, op_id="listPublished")},
        "/v1/functions/{name}/published/{version}": {
            "get": _op("One published version", _ok("200", "the version", _ref("PublishedVersion")), "400", "404",
                       scope="read", op_id="getPublished", params=name + [
                           _path("version", {"type": "integer", "minimum": 0}, "the published version")]),
            "delete": _op("Delete a published version no alias or trigger points at", _ok(
                "200", "deleted", _obj(["deleted"], deleted=_ref("PublishedVersion"))), "400", "404", "409",
                scope="deploy", op_id="deletePublished", params=name + [
                    _path("version", {"type": "integer", "minimum": 0}, "the published version")]),
        },
        "/v1/functions/{name}/aliases": {"get": _op(
            "Aliases", _ok("200", "aliases", _listing("aliases", _ref("Alias"))), "400", "404", scope="read",
            params=name, op_id="listAliases")},
        "/v1/functions/{name}/aliases/{alias}": {
            "get": _op("One alias", _ok("200", "the alias", _ref("Alias")), "400", "404", scope="read",
                       op_id="getAlias", params=name + [_path("alias", STRING, "the alias's name")]),
            "put": _op("Create or move an alias (pre-warms the target's min_instances first)", _ok(
                "200", "the alias", _ref("Alias")), "400", "404", "409", "413", scope="deploy", op_id="putAlias",
                body=_body(_ref("AliasPut")), params=name + [
                    _path("alias", {"type": "string", "pattern": ALIAS_PATTERN}, "the alias's name")]),
            "delete": _op("Delete an alias no trigger targets", _ok("200", "deleted", _obj(
                ["deleted"], deleted=_ref("Alias"))), "400", "404", "409", scope="deploy", op_id="deleteAlias",
                params=name + [_path("alias", STRING, "the alias's name")]),
        },
        "/v1/queues/{queue}/messages": {
            "post": _op("Send a message (the body, UTF-8 text of at most 256 KB) to a queue", _ok(
                "201", "sent", _obj(["messageId"], messageId=STRING)), "400", "404", "413", "429", "503",
                scope="invoke", op_id="sendMessage", body={"required": False, "content": {
                    "text/plain": {"schema": {"type": "string"}}, "application/json": {"schema": {}}}},
                params=[_path("queue", {"type": "string", "pattern": QUEUE_PATTERN},
                              "an embedded queue's name (or, URL-encoded, an SQS queue URL)")]),
            "get": _op("Messages waiting in an embedded queue (what destinations of kind queue sent)", _ok(
                "200", "messages", _listing("messages", {"type": "object"})), "400", "404", scope="read",
                op_id="listMessages", params=[
                    _path("queue", STRING, "the embedded queue's name"),
                    _query("limit", {"type": "integer", "minimum": 1, "maximum": 1000}, "at most this many (default 10)"),
                    _query("delete", STRING, "1 or true: take the messages (they are removed)")]),
        },
        "/v1/usage": {"get": _op("Invocations, errors, cold starts and GB-seconds per function", _ok(
            "200", "usage", _listing("usage", _ref("Usage"))), "400", "404", scope="records", op_id="usage", params=[
            SINCE, _query("function", STRING, "only this function")])},
        "/v1/triggers": {
            "get": _op("Triggers: HTTP routes, schedules and queue sources", _ok("200", "triggers", _listing(
                "triggers", {"anyOf": [_ref("Trigger"), _ref("EventTrigger")]})), scope="read", op_id="listTriggers",
                params=[_query("function", STRING, "only this function's")]),
            "post": _op("Add a trigger: an HTTP route (kind http, the default), a schedule or a queue source",
                        _ok("201", "added", {"anyOf": [_ref("Trigger"), _ref("EventTrigger")]}), "400", "404", "409",
                        "413", scope="deploy", op_id="addTrigger", body=_body({"oneOf": [
                            _ref("HttpTriggerCreate"), _ref("ScheduleTriggerCreate"), _ref("QueueTriggerCreate")]})),
            "delete": _op("Remove a trigger: an HTTP route by method and path, a schedule or queue source by id", _ok(
                "200", "removed", _obj(["deleted"], deleted={"anyOf": [_ref("Trigger"), _ref("EventTrigger")]})),
                "400", "404", scope="deploy", op_id="removeTrigger", params=[
                    _query("id", STRING, "a schedule's or queue trigger's id (then method and path are not read)"),
                    _query("method", STRING, "the HTTP trigger's method"),
                    _query("path", STRING, "the HTTP trigger's path")]),
        },
        "/v1/triggers/{trigger_id}": {"patch": _op(
            "Change a schedule or queue trigger", _ok("200", "the trigger", _ref("EventTrigger")), "400", "404",
            "413", scope="deploy", op_id="updateTrigger", body=_body(_ref("EventTriggerUpdate")),
            params=[_path("trigger_id", STRING, "the trigger's id")])},
        "/v1/triggers/keys": {
            "get": _op("Keys of a bearer or hmac HTTP trigger (never the keys themselves)", _ok(
                "200", "keys", _listing("keys", _ref("TriggerKey"))), "400", "404", scope="read",
                op_id="listTriggerKeys", params=trigger_args),
            "post": _op("Make a key of a bearer or hmac HTTP trigger; the answer is the only place it appears", _ok(
                "201", "the key, in key", {"allOf": [_ref("TriggerKey"), _obj(["key"], key=STRING)]}),
                "400", "404", "409", "413", scope="deploy", op_id="createTriggerKey", body=_body({
                    "type": "object", "required": ["method", "path"], "properties": {
                        "method": {"type": "string", "minLength": 1}, "path": {"type": "string", "minLength": 1},
                        "name": {"type": ["string", "null"], "pattern": KEY_NAME_PATTERN,
                                 "description": "default key-<random>"}}})),
            "delete": _op("Revoke a key of an HTTP trigger", _ok("200", "revoked", _obj(
                ["revoked"], revoked=_ref("TriggerKey"))), "400", "404", scope="deploy", op_id="revokeTriggerKey",
                params=[*trigger_args, _query("name", {"type": "string", "pattern": KEY_NAME_PATTERN},
                                              "the key's name", required=True)]),
        },
        "/v1/layers": {"get": _op("Layer versions and the functions that use each", _ok(
            "200", "layers", _listing("layers", _ref("Layer"))), scope="read", op_id="listLayers")},
        "/v1/layers/{name}": {
            "get": _op("A layer's versions", _ok("200", "versions", _listing("versions", _ref("Layer"))), "400", "404",
                       scope="read", op_id="getLayer", params=[layer_name]),
            "post": publish,
            "put": {**publish, "operationId": "publishLayerPut"},
        },
        "/v1/layers/{name}/versions/{version}": {"delete": _op(
            "Delete a layer version no function uses", _ok("200", "deleted", _obj(["deleted"], deleted=_ref("Layer"))),
            "400", "404", "409", scope="deploy", op_id="deleteLayer", params=[
                layer_name, _path("version", {"type": "integer", "minimum": 0}, "the version")])},
    }


def document(server_url: str | None = None, *, auth_required: bool = True) -> dict:
    """The OpenAPI 3.1 document of the control API (``server_url``: where it is served).

    Bearer auth is always declared; ``auth_required=False`` (a server that does not enforce API
    tokens) adds the empty requirement, so the document does not claim a 401 the server never gives."""
    doc = {
        "openapi": "3.1.0",
        "info": {"title": "FaaS Appliance control API", "version": "1",
                 "description": "Functions, code, triggers, layers, invocations, events, logs, usage and API "
                                "tokens. Every operation but GET /v1/health needs Authorization: Bearer <token>; "
                                "x-scope is the action it needs and x-token-scopes the token scopes that allow it. "
                                'Errors are {"error": {"code", "message", "requestId", ...}} with stable codes; '
                                "every answer carries X-Request-Id."},
        "security": [{"bearerAuth": []}] if auth_required else [{"bearerAuth": []}, {}],
        "paths": _paths(),
        "components": {"schemas": _schemas(), "securitySchemes": {
            "bearerAuth": {"type": "http", "scheme": "bearer",
                           "description": "an API token: Authorization: Bearer <token>"}}},
    }
    if server_url:
        doc["servers"] = [{"url": server_url}]
    return doc
