"""Errors with stable codes, and the one table that turns them into HTTP statuses.

Every failure a client can see is an :class:`ApplianceError` with a dotted ``code`` that never
changes once published (clients and tests key on it) and an HTTP ``status``. Entry points turn an
error into a response with :func:`to_response_body`; no other module picks a status code.
"""

from __future__ import annotations


class ApplianceError(Exception):
    """Base of every error the platform reports to a client."""

    code = "Internal.Error"
    status = 500
    #: Seconds a client should wait before retrying (adds a ``Retry-After`` header), or None.
    retry_after: int | None = None

    def __init__(self, message: str, *, field: str | None = None, detail: dict | None = None):
        super().__init__(message)
        self.message = message
        self.field = field
        self.detail = detail or {}

    def to_body(self, request_id: str | None = None) -> dict:
        err: dict = {"code": self.code, "message": self.message}
        if self.field:
            err["field"] = self.field
        if self.detail:
            err.update(self.detail)
        if request_id:
            err["requestId"] = request_id
        return {"error": err}


class ValidationError(ApplianceError):
    code = "Request.Invalid"
    status = 400


class UnsafeCode(ValidationError):
    """A code package we refuse to unpack (traversal, links, bombs, oversize, not a zip)."""

    code = "Code.Unsafe"


class CodeSyntaxError(ValidationError):
    """The handler's module does not compile (found at upload; ``file`` and ``line`` say where)."""
    code = "Code.SyntaxError"


class HandlerNotFound(ValidationError):
    """The package has no module or no function for the handler setting (found at upload)."""
    code = "Code.HandlerNotFound"


class PayloadTooLarge(ValidationError):
    code = "Request.TooLarge"
    status = 413


class RequestTimeout(ApplianceError):
    """The client did not send its request (its body) within the receive deadline."""

    code = "Request.Timeout"
    status = 408


class NotFound(ApplianceError):
    code = "Resource.NotFound"
    status = 404


class FunctionNotFound(NotFound):
    code = "Function.NotFound"


class RouteNotFound(NotFound):
    code = "Trigger.NotFound"


class MethodNotAllowed(ApplianceError):
    code = "Trigger.MethodNotAllowed"
    status = 405

    def __init__(self, message: str, *, allow: tuple[str, ...] = (), **kw):
        super().__init__(message, **kw)
        #: The methods the path has routes for (the ``Allow`` header of the 405).
        self.allow = tuple(allow)


class ConsoleNotBuilt(ApplianceError):
    """The console's page is served but its JavaScript bundle was never built (`make console`)."""

    code = "Console.NotBuilt"
    status = 503


class Conflict(ApplianceError):
    code = "Resource.Conflict"
    status = 409


class RevisionConflict(Conflict):
    """A check-and-set write lost against a concurrent writer; re-read and try again."""

    code = "Resource.RevisionConflict"


class CodeNotFound(NotFound):
    code = "Code.NotFound"


class VersionNotFound(NotFound):
    """A published version (``NAME:N``) that does not exist."""
    code = "Version.NotFound"


class AliasNotFound(NotFound):
    """An alias (``NAME:ALIAS``) that does not exist."""
    code = "Alias.NotFound"


class VersionInUse(Conflict):
    """A published version an alias or a trigger still points at cannot be deleted."""
    code = "Version.InUse"


class AliasInUse(Conflict):
    """An alias a trigger still targets cannot be deleted."""
    code = "Alias.InUse"


class VersionUnsupported(ApplianceError):
    """The scheduler cannot run a published version apart from $LATEST (cluster mode, for now)."""
    code = "Version.Unsupported"
    status = 501


class NoCode(Conflict):
    """The function has no code uploaded yet (nothing to run, nothing to publish)."""
    code = "Function.NoCode"


class QueueFull(ApplianceError):
    """Too many requests are already waiting for an instance of this function."""

    code = "Activation.QueueFull"
    status = 429
    retry_after = 1


class EventQueueFull(ApplianceError):
    """Too many asynchronous events are already pending (APPLIANCE_ASYNC_MAX_PENDING)."""

    code = "Async.QueueFull"
    status = 429
    retry_after = 1


class MessageQueueFull(ApplianceError):
    """An embedded queue holds as many messages as it may."""

    code = "Queue.Full"
    status = 429
    retry_after = 1


class ColdStartTimeout(ApplianceError):
    """No instance became free before the request's queue deadline."""

    code = "Activation.Timeout"
    status = 503
    retry_after = 1


class PlacementFailed(ApplianceError):
    """The scheduler could not start an instance (no capacity, spawn failure, Nomad said no)."""

    code = "Instance.PlacementFailed"
    status = 503
    retry_after = 2


class SchedulerUnavailable(ApplianceError):
    code = "Scheduler.Unavailable"
    status = 503
    retry_after = 2


class RegistryUnavailable(ApplianceError):
    code = "Registry.Unavailable"
    status = 503
    retry_after = 2


class InstanceCrashed(ApplianceError):
    """The instance died or dropped the connection while running the request.

    The request may have run, so it is not retried.
    """

    code = "Instance.Crashed"
    status = 502


class FunctionError(ApplianceError):
    """The function itself failed; ``detail`` carries the runtime's structured error."""

    code = "Function.Error"
    status = 502

    def __init__(self, error: dict, *, status: int | None = None):
        error_type = error.get("errorType") or "Function.Error"
        super().__init__(error.get("errorMessage") or error_type, detail={"function": error})
        self.error = error
        self.code = error_type
        if status is not None:
            self.status = status


class FunctionTimeout(FunctionError):
    code = "Function.Timeout"
    status = 504


class Unauthorized(ApplianceError):
    code = "Auth.Unauthorized"
    status = 401


class TriggerUnauthorized(ApplianceError):
    """A trigger's caller did not authenticate as the trigger requires (missing, wrong, expired or
    replayed credentials). Nothing reached the function; ``challenge`` is the WWW-Authenticate value."""

    code = "Trigger.Unauthorized"
    status = 401

    def __init__(self, message: str, *, challenge: str):
        super().__init__(message)
        self.challenge = challenge


class OriginForbidden(ApplianceError):
    """A CORS preflight from an origin, method or header the trigger does not allow."""

    code = "Trigger.OriginForbidden"
    status = 403


class ReplayGuardFull(ApplianceError):
    """The edge remembers as many recent HMAC signatures as it may; it refuses new ones rather than
    forget one that could then be replayed."""

    code = "Trigger.ReplayGuardFull"
    status = 503
    retry_after = 5


#: errorType reported by a runtime -> HTTP status at the edge. Anything else is a 502.
RUNTIME_ERROR_STATUS = {
    "Function.Timeout": 504,
    "Runtime.InvalidEvent": 400,
}


def function_error(error: dict) -> FunctionError:
    """Wrap a runtime's structured error in the matching platform error."""
    error_type = error.get("errorType", "")
    if error_type == "Function.Timeout":
        return FunctionTimeout(error)
    return FunctionError(error, status=RUNTIME_ERROR_STATUS.get(error_type, 502))


def to_response_body(exc: BaseException, request_id: str | None = None) -> tuple[int, dict, dict]:
    """(status, headers, body) for any exception; unknown ones become a 500 without details."""
    if isinstance(exc, ApplianceError):
        headers = {}
        if exc.retry_after is not None:
            headers["Retry-After"] = str(exc.retry_after)
        challenge = getattr(exc, "challenge", None)
        if challenge:
            headers["WWW-Authenticate"] = challenge
        if getattr(exc, "allow", None):
            headers["Allow"] = ", ".join(exc.allow)
        return exc.status, headers, exc.to_body(request_id)
    internal = ApplianceError("internal error; the appliance log has the details")
    return 500, {}, internal.to_body(request_id)
