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
from urllib.parse import quote

import requests

from appliance.core.codepkg import zip_directory

DEFAULT_API = os.environ.get("FAAS_API", "http://127.0.0.1:8081")


class ApiError(Exception):
    """An error answer from the API: ``code`` is the stable error code, ``status`` the HTTP status."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None, body: dict | None = None):
        super().__init__(f"{code}: {message}")
        self.status, self.code, self.message, self.field, self.body = status, code, message, field, body or {}


class ApplianceClient:
    def __init__(self, base_url: str = DEFAULT_API, *, token: str | None = None, timeout_s: float = 960.0):
        self.base = base_url.rstrip("/")
        self.session = requests.Session()
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"
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

    # layers
    def publish_layer(self, name: str, source: str | Path, description: str = "") -> dict:
        """Publish a directory or a .zip as the layer's next version."""
        p = Path(source)
        if p.is_dir():
            data = zip_directory(p)
        elif p.is_file() and p.suffix == ".zip":
            data = p.read_bytes()
        else:
            raise ApiError(0, "Client.NoSource", f"{source} is not a directory or a .zip file")
        return self._req("POST", f"/v1/layers/{name}", data=data, params={"description": description} if description
                         else None, headers={"Content-Type": "application/zip"}).json()

    def list_layers(self) -> list[dict]:
        return self._req("GET", "/v1/layers").json()["layers"]

    def delete_layer(self, name: str, version: int) -> dict:
        return self._req("DELETE", f"/v1/layers/{name}/versions/{version}").json()

    def deploy(self, name: str, source: str | Path, *, triggers=(), **config) -> dict:
        """Create or update ``name`` with ``config``, upload ``source`` (dir, zip or file) and bind
        ``triggers`` (``[{"method", "path"}]``; those already bound to it are kept).

        A failed deploy of a new function leaves nothing behind: the source is read and the routes
        are checked for clashes before the function is created, and a function created here is
        removed again (with the triggers bound here) when its code or a trigger is refused. For an
        existing function, the triggers bound here are removed again and the error says which
        version is live without them. The answer has ``triggers_added``.
        """
        data, filename = package(source)
        wanted = [(str(t.get("method", "GET")).upper(), t.get("path", "")) for t in triggers]
        extras = {(str(t.get("method", "GET")).upper(), t.get("path", "")): {k: t[k] for k in ("auth", "cors")
                                                                            if t.get(k) is not None}
                  for t in triggers}
        if wanted:
            taken = {(t["method"], t["path"]): t["function"] for t in self.list_triggers()}
            for key in wanted:
                if taken.get(key, name) != name:
                    raise ApiError(409, "Resource.Conflict", f"trigger {key[0]} {key[1]} is bound to function "
                                   f"{taken[key]!r}; nothing was deployed", "path")
        created = False
        before = None
        try:
            before = self.get_function(name)
            if config:
                self.update_function(name, **config)
        except ApiError as exc:
            if exc.status != 404:
                raise
            self.create_function(name=name, **config)
            created = True
        added = []
        out = None
        try:
            out = self.upload_code(name, data, filename=filename)
            mine = {(t["method"], t["path"]) for t in self.list_triggers(name)}
            for method, path in wanted:
                if (method, path) in mine:
                    continue
                try:
                    added.append(self.add_trigger(name, method, path, **extras.get((method, path), {})))
                except ApiError as exc:
                    live = "nothing was deployed" if created else \
                        f"version {out['version']['version']} is live without it"
                    raise ApiError(exc.status, exc.code, f"trigger {method} {path} was not bound: {exc.message}; "
                                   f"{live}", exc.field, exc.body) from None
            out["triggers_added"] = added
            return out
        except ApiError:
            if before is not None and config and out is None:
                # The code was refused: the settings go back to what the live code was deployed with.
                try:
                    self.update_function(name, **{k: before[k] for k in config if k in before})
                except ApiError:
                    pass
            for t in added:
                try:
                    self.remove_trigger(t["method"], t["path"])
                except ApiError:
                    pass
            if created:
                try:
                    self.delete_function(name)
                except ApiError:
                    pass  # the upload's error is the one to report
            raise

    # triggers
    def add_trigger(self, function: str, method: str, path: str, invocation: str | None = None, *,
                    auth: dict | None = None, cors: dict | None = None) -> dict:
        body = {"function": function, "method": method, "path": path}
        if invocation:
            body["invocation"] = invocation
        if auth is not None:
            body["auth"] = auth
        if cors is not None:
            body["cors"] = cors
        return self._req("POST", "/v1/triggers", json=body).json()

    def create_trigger_key(self, method: str, path: str, name: str | None = None) -> dict:
        body = {"method": method, "path": path}
        if name:
            body["name"] = name
        return self._req("POST", "/v1/triggers/keys", json=body).json()

    def list_trigger_keys(self, method: str, path: str) -> list[dict]:
        return self._req("GET", "/v1/triggers/keys", params={"method": method, "path": path}).json()["keys"]

    def revoke_trigger_key(self, method: str, path: str, name: str) -> dict:
        return self._req("DELETE", "/v1/triggers/keys", params={"method": method, "path": path, "name": name}).json()

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

    # published versions and aliases
    def publish(self, name: str, description: str | None = None) -> dict:
        body = {"description": description} if description is not None else {}
        return self._req("POST", f"/v1/functions/{name}/publish", json=body).json()

    def published(self, name: str) -> list[dict]:
        return self._req("GET", f"/v1/functions/{name}/published").json()["versions"]

    def delete_published(self, name: str, version: int) -> dict:
        return self._req("DELETE", f"/v1/functions/{name}/published/{int(version)}").json()

    def aliases(self, name: str) -> list[dict]:
        return self._req("GET", f"/v1/functions/{name}/aliases").json()["aliases"]

    def alias(self, name: str, alias: str) -> dict:
        return self._req("GET", f"/v1/functions/{name}/aliases/{quote(alias, safe='')}").json()

    def set_alias(self, name: str, alias: str, version, *, weights: dict | None = None,
                  description: str | None = None) -> dict:
        body = {"version": version, "weights": weights or {}}
        if description is not None:
            body["description"] = description
        return self._req("PUT", f"/v1/functions/{name}/aliases/{quote(alias, safe='')}", json=body).json()

    def delete_alias(self, name: str, alias: str) -> dict:
        return self._req("DELETE", f"/v1/functions/{name}/aliases/{quote(alias, safe='')}").json()

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

    # tokens (admin scope)
    def create_token(self, name: str, scope: str, *, functions: str | None = None, expires=None) -> dict:
        body = {"name": name, "scope": scope}
        if functions:
            body["functions"] = functions
        if expires:
            body["expires"] = expires
        return self._req("POST", "/v1/tokens", json=body).json()

    def list_tokens(self) -> list[dict]:
        return self._req("GET", "/v1/tokens").json()["tokens"]

    def revoke_token(self, name: str) -> dict:
        return self._req("DELETE", f"/v1/tokens/{name}").json()["revoked"]


ADMIN_TOKEN_FILE = "admin.token"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def config_path() -> Path:
    """``$XDG_CONFIG_HOME/faas/config`` (``~/.config/faas/config``): ``KEY = value`` lines,
    ``api`` and ``token`` (``#`` starts a comment)."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "faas" / "config"


def read_config(path: Path | None = None) -> dict[str, str]:
    path = path or config_path()
    try:
        text = path.read_text()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        k, _, v = line.partition("=")
        out[k.strip().lower()] = v.strip().strip('"').strip("'")
    return out


def local_api(data_dir: str | Path) -> str | None:
    """The API URL of the appliance running from ``data_dir`` (its ``appliance.json``), if any."""
    try:
        return json.loads((Path(data_dir) / "appliance.json").read_text()).get("api_url")
    except (OSError, ValueError, AttributeError):
        return None


def find_token(api: str, data_dir: str | Path, given: str | None = None) -> tuple[str | None, str]:
    """(token, where it came from) for calls to ``api``: ``given`` (``--token`` or ``FAAS_TOKEN``),
    then the data directory's ``admin.token`` (only for an appliance on this machine, so a local
    admin token is never sent elsewhere), then the config file's ``token``."""
    if given:
        return given.strip(), "--token/FAAS_TOKEN"
    from urllib.parse import urlparse

    path = Path(data_dir) / ADMIN_TOKEN_FILE
    host = (urlparse(api).hostname or "").lower()
    if host in LOOPBACK_HOSTS or api.rstrip("/") == (local_api(data_dir) or "").rstrip("/"):
        try:
            token = path.read_text().strip()
            if token:
                return token, str(path)
        except OSError:
            pass
    token = read_config().get("token")
    if token:
        return token, str(config_path())
    return None, "none"


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
