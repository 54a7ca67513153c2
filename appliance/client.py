"""Python SDK for the control-plane API; the ``faas`` CLI is built on it.

>>> from appliance.client import ApplianceClient
>>> api = ApplianceClient("http://127.0.0.1:8081")
>>> api.deploy("hello", "examples/hello", handler="index.handler")
>>> api.add_trigger("hello", "GET", "/hello/serverless")
>>> api.invoke("hello", {"name": "you"})
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import requests

from appliance.core.codepkg import zip_directory

DEFAULT_API = os.environ.get("FAAS_API", "http://127.0.0.1:8081")


class ApiError(Exception):
    """An error answer from the API: ``code`` is the stable error code, ``status`` the HTTP status."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None, body: dict | None = None):
        super().__init__(f"{code}: {message}")
        self.status, self.code, self.message, self.field, self.body = status, code, message, field, body or {}


class ApplianceClient:
    def __init__(self, base_url: str = DEFAULT_API, *, timeout_s: float = 960.0):
        self.base = base_url.rstrip("/")
        self.session = requests.Session()
        self.timeout_s = timeout_s

    def _req(self, method: str, path: str, **kw):
        kw.setdefault("timeout", (5.0, self.timeout_s))
        try:
            resp = self.session.request(method, self.base + path, **kw)
        except requests.ConnectionError as exc:
            raise ApiError(0, "Client.Unreachable", f"cannot reach the appliance at {self.base} ({exc.__class__.__name__}); "
                           "is it running? start it with `make up` or `faas up`, or set FAAS_API") from None
        if resp.status_code >= 400:
            try:
                err = resp.json()["error"]
                raise ApiError(resp.status_code, err.get("code", "Error"), err.get("message", resp.text),
                               err.get("field"), err)
            except (ValueError, KeyError, TypeError):
                raise ApiError(resp.status_code, "Http.Error", resp.text[:500]) from None
        return resp

    # functions
    def list_functions(self) -> list[dict]:
        return self._req("GET", "/v1/functions").json()["functions"]

    def get_function(self, name: str) -> dict:
        return self._req("GET", f"/v1/functions/{name}").json()

    def create_function(self, **config) -> dict:
        return self._req("POST", "/v1/functions", json=config).json()

    def update_function(self, name: str, **config) -> dict:
        return self._req("PATCH", f"/v1/functions/{name}", json=config).json()

    def delete_function(self, name: str) -> dict:
        return self._req("DELETE", f"/v1/functions/{name}").json()

    def upload_code(self, name: str, data: bytes, *, filename: str | None = None) -> dict:
        params = {"filename": filename} if filename else None
        return self._req("PUT", f"/v1/functions/{name}/code", data=data, params=params,
                         headers={"Content-Type": "application/octet-stream" if filename else "application/zip"}).json()

    def deploy(self, name: str, source: str | Path, **config) -> dict:
        """Create or update ``name`` with ``config`` and upload ``source`` (dir, zip or file).

        A failed deploy of a new function leaves nothing behind: the source is read before the
        function is created, and a function created here is removed again when its code is refused.
        """
        data, filename = package(source)
        created = False
        try:
            self.get_function(name)
            if config:
                self.update_function(name, **config)
        except ApiError as exc:
            if exc.status != 404:
                raise
            self.create_function(name=name, **config)
            created = True
        try:
            return self.upload_code(name, data, filename=filename)
        except ApiError:
            if created:
                try:
                    self.delete_function(name)
                except ApiError:
                    pass  # the upload's error is the one to report
            raise

    # triggers
    def add_trigger(self, function: str, method: str, path: str, invocation: str | None = None) -> dict:
        body = {"function": function, "method": method, "path": path}
        if invocation:
            body["invocation"] = invocation
        return self._req("POST", "/v1/triggers", json=body).json()

    def add_schedule(self, function: str, schedule: str, *, event=None, timezone: str | None = None,
                     enabled: bool = True) -> dict:
        body = {"function": function, "kind": "schedule", "schedule": schedule, "enabled": enabled}
        if event is not None:
            body["event"] = event
        if timezone:
            body["timezone"] = timezone
        return self._req("POST", "/v1/triggers", json=body).json()

    def add_queue_source(self, function: str, queue: str, **settings) -> dict:
        body = {"function": function, "kind": "queue", "queue": queue, **settings}
        return self._req("POST", "/v1/triggers", json=body).json()

    def send_message(self, queue: str, body: str) -> dict:
        return self._req("POST", f"/v1/queues/{queue}/messages", data=body.encode()).json()

    def update_trigger(self, trigger_id: str, **patch) -> dict:
        return self._req("PATCH", f"/v1/triggers/{trigger_id}", json=patch).json()

    def remove_trigger_id(self, trigger_id: str) -> dict:
        return self._req("DELETE", "/v1/triggers", params={"id": trigger_id}).json()

    def list_triggers(self, function: str | None = None) -> list[dict]:
        return self._req("GET", "/v1/triggers", params={"function": function} if function else None).json()["triggers"]

    def remove_trigger(self, method: str, path: str) -> dict:
        return self._req("DELETE", "/v1/triggers", params={"method": method, "path": path}).json()

    # invocations
    def invoke_raw(self, name: str, event=None, *, asynchronous: bool = False) -> requests.Response:
        body = json.dumps({} if event is None else event)
        kw = {"timeout": (5.0, self.timeout_s)}
        headers = {"Content-Type": "application/json"}
        if asynchronous:
            headers["X-Amz-Invocation-Type"] = "Event"
        try:
            return self.session.post(f"{self.base}/v1/functions/{name}/invocations", data=body,
                                     headers=headers, **kw)
        except requests.ConnectionError:
            raise ApiError(0, "Client.Unreachable", f"cannot reach the appliance at {self.base}") from None

    def invoke(self, name: str, event=None):
        resp = self.invoke_raw(name, event)
        if resp.status_code >= 400:
            err = resp.json().get("error", {})
            raise ApiError(resp.status_code, err.get("code", "Error"), err.get("message", ""), None, err)
        return resp.json()

    def events(self, name: str, **params) -> dict:
        """Asynchronous events of a function: ``{"events": [...], "counts": {state: n}}``."""
        return self._req("GET", f"/v1/functions/{name}/events", params=params).json()

    def invocations(self, name: str, **params) -> list[dict]:
        return self._req("GET", f"/v1/functions/{name}/invocations", params=params).json()["invocations"]

    def logs(self, name: str, **params) -> dict:
        return self._req("GET", f"/v1/functions/{name}/logs", params=params).json()

    def usage(self, **params) -> list[dict]:
        return self._req("GET", "/v1/usage", params=params).json()["usage"]

    def health(self) -> dict:
        return self._req("GET", "/v1/health").json()


def package(source: str | Path) -> tuple[bytes, str | None]:
    """(bytes, filename) for a directory (zipped), a .zip file, or a single source file."""
    p = Path(source)
    if p.is_dir():
        return zip_directory(p), None
    if not p.exists():
        raise ApiError(0, "Client.NoSource", f"{source} does not exist: give a directory, a .zip or a source file")
    if p.suffix == ".zip":
        return p.read_bytes(), None
    return p.read_bytes(), p.name


def read_function_json(source: str | Path) -> dict:
    """Settings a code directory carries in function.json (the CLI's flags override them)."""
    p = Path(source)
    f = p / "function.json" if p.is_dir() else None
    if f and f.exists():
        try:
            return json.loads(f.read_text())
        except ValueError as exc:
            raise ApiError(0, "Client.BadFunctionJson", f"{f} is not valid JSON: {exc}") from None
    return {}
