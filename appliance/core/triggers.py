"""HTTP trigger routes: validation, conflict detection and matching. Pure, no IO.

A route is ``(method, path)``. Path segments are literals, ``{name}`` (one segment) or, last only,
``{name+}`` (the rest of the path, at least one segment); ``$default`` (method ``ANY``) is API Gateway's
catch-all for whatever no other route matches. When several routes match, the most
specific wins: more literal segments first, then single parameters over a greedy tail, then a
named method over ``ANY``. Two routes conflict when they have the same method and the same shape
(``/users/{id}`` and ``/users/{uid}`` are the same route).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from appliance.core.errors import MethodNotAllowed, RouteNotFound, ValidationError
from appliance.core.model import Trigger

METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "ANY")
#: The edge's own paths. The control API's /v1/ lives on another port (or host), so a function may
#: serve /v1/... on the edge like any API would.
RESERVED_PREFIXES = ("/_/",)
LITERAL_RE = re.compile(r"[A-Za-z0-9._~!$&'()*,;=:@-]+\Z")
PARAM_RE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(\+?)\}\Z")
MAX_PATH = 512
#: API Gateway's catch-all route: serves every request no other route matches (method ``ANY`` only).
DEFAULT_ROUTE = "$default"


def normalise_method(method: str) -> str:
    m = (method or "").upper()
    if m not in METHODS:
        raise ValidationError(f"method must be one of {', '.join(METHODS)}; got {method!r}", field="method")
    return m


def parse_path(path: str) -> tuple[tuple[str, str], ...]:
    """Split a route path into ``(kind, value)`` segments: kind is lit, param or greedy."""
    if path == DEFAULT_ROUTE:
        return ()
    if not isinstance(path, str) or not path.startswith("/"):
        raise ValidationError(f"path must start with '/' (or be {DEFAULT_ROUTE!r}), got {path!r}", field="path")
    if len(path) > MAX_PATH:
        raise ValidationError(f"path is longer than {MAX_PATH} characters", field="path")
    if path.startswith(RESERVED_PREFIXES) or path == "/_":
        raise ValidationError("paths under /_/ are the edge router's own (health, metrics); choose another prefix",
                              field="path")
    if path == "/":
        return ()
    raw = path[1:].rstrip("/") if len(path) > 1 else ""
    segments = []
    names = set()
    parts = raw.split("/")
    for i, part in enumerate(parts):
        m = PARAM_RE.match(part)
        if m:
            name, greedy = m.group(1), m.group(2)
            if name in names:
                raise ValidationError(f"path parameter {{{name}}} appears twice in {path!r}", field="path")
            names.add(name)
            if greedy and i != len(parts) - 1:
                raise ValidationError(f"greedy parameter {{{name}+}} must be the last segment of {path!r}", field="path")
            segments.append(("greedy" if greedy else "param", name))
        elif part and LITERAL_RE.match(part):
            segments.append(("lit", part))
        else:
            raise ValidationError(
                f"path segment {part!r} of {path!r} is not a literal or a {{parameter}}; "
                "use letters, digits and -._~ or {name} / {name+}", field="path")
    return tuple(segments)


def shape(segments: tuple[tuple[str, str], ...]) -> str:
    return "/" + "/".join(v if k == "lit" else ("{}" if k == "param" else "{+}") for k, v in segments)


def route_key(method: str, path: str) -> str:
    """Identity of a route for conflict detection."""
    method = normalise_method(method)
    if path == DEFAULT_ROUTE:
        if method != "ANY":
            raise ValidationError(f"the {DEFAULT_ROUTE} route takes every method: use ANY, not {method}", field="method")
        return DEFAULT_ROUTE
    return f"{method} {shape(parse_path(path))}"


@dataclass(frozen=True)
class Match:
    trigger: Trigger
    params: dict[str, str]
    route_key: str


class _Node:
    """One position of the route trie: children by literal segment, one child for ``{param}``, and
    the routes that end here (by method) or take the rest of the path from here (``{name+}``)."""

    __slots__ = ("lit", "param", "routes", "greedy")

    def __init__(self):
        self.lit: dict[str, _Node] = {}
        self.param: _Node | None = None
        self.routes: dict[str, tuple] = {}
        self.greedy: dict[str, tuple] = {}


class RouteTable:
    """Immutable table built from the trigger list; rebuild it when triggers change.

    Routes live in a trie of their segments, so matching a path visits at most the trie nodes along
    it (a literal child and a parameter child per segment), however many routes the table holds:
    with 2,000 triggers an unmatched path used to compare against every one. Among the routes that
    match, the most specific wins (module docstring); ``$default`` catches what nothing else does.
    """

    def __init__(self, triggers: list[Trigger]):
        self._root = _Node()
        self._default: Trigger | None = None
        self._count = 0
        for t in triggers:
            self._count += 1
            if t.path == DEFAULT_ROUTE:
                self._default = t
                continue
            segs = parse_path(t.path)
            literal = sum(1 for k, _ in segs if k == "lit")
            greedy = 1 if segs and segs[-1][0] == "greedy" else 0
            entry = ((literal, -greedy, len(segs)), segs, t)
            node = self._root
            for kind, value in segs:
                if kind == "lit":
                    node = node.lit.setdefault(value, _Node())
                elif kind == "param":
                    node.param = node.param or _Node()
                    node = node.param
            (node.greedy if greedy else node.routes).setdefault(t.method, entry)

    def __len__(self) -> int:
        return self._count

    def _candidates(self, parts: list[str]) -> tuple[list[dict], int]:
        """The method maps of every route shape matching ``parts``, and how many nodes were visited."""
        found: list[dict] = []
        visits = 0
        stack = [(self._root, 0)]
        n = len(parts)
        while stack:
            node, i = stack.pop()
            visits += 1
            if node.greedy and i < n:
                found.append(node.greedy)
            if i == n:
                if node.routes:
                    found.append(node.routes)
                continue
            part = parts[i]
            child = node.lit.get(part)
            if child is not None:
                stack.append((child, i + 1))
            if node.param is not None and part:
                stack.append((node.param, i + 1))
        return found, visits

    def visits(self, path: str) -> int:
        """Trie nodes a match of ``path`` visits (the cost of matching; for tests and benchmarks)."""
        return self._candidates(_parts(path))[1]

    def match(self, method: str, path: str) -> Match:
        """The route for ``method`` and ``path`` (the engine's decoded path: segments are not decoded again)."""
        parts = _parts(path)
        method = method.upper()
        found, _ = self._candidates(parts)
        best = None
        for by_method in found:
            for m, rank in ((method, 1), ("GET" if method == "HEAD" else None, 1), ("ANY", 0)):
                entry = by_method.get(m) if m else None
                if entry is not None:
                    key = (*entry[0], rank)
                    if best is None or key > best[0]:
                        best = (key, entry)
                    break
        if best is not None:
            _, segs, trigger = best[1]
            return Match(trigger, _params(segs, parts), f"{trigger.method} {trigger.path}")
        if self._default is not None:
            return Match(self._default, {}, DEFAULT_ROUTE)
        if found:
            allow = {m for by_method in found for m in by_method}
            if "GET" in allow:
                allow.add("HEAD")
            allow = tuple(sorted(allow))
            raise MethodNotAllowed(f"{method} is not allowed on {path}; allowed: {', '.join(allow)}", allow=allow)
        raise RouteNotFound(f"no trigger matches {method} {path}")


def _parts(path: str) -> list[str]:
    stripped = path.strip("/")
    return stripped.split("/") if stripped else []


def _params(segs, parts) -> dict[str, str]:
    params: dict[str, str] = {}
    for i, (kind, value) in enumerate(segs):
        if kind == "greedy":
            params[value] = "/".join(parts[i:])
        elif kind == "param":
            params[value] = parts[i]
    return params
