"""HTTP trigger routes: validation, conflict detection and matching. Pure, no IO.

A route is ``(method, path)``. Path segments are literals, ``{name}`` (one segment) or, last only,
``{name+}`` (the rest of the path, at least one segment). When several routes match, the most
specific wins: more literal segments first, then single parameters over a greedy tail, then a
named method over ``ANY``. Two routes conflict when they have the same method and the same shape
(``/users/{id}`` and ``/users/{uid}`` are the same route).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote

from appliance.core.errors import MethodNotAllowed, RouteNotFound, ValidationError
from appliance.core.model import Trigger

METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "ANY")
RESERVED_PREFIXES = ("/_/", "/v1/")
LITERAL_RE = re.compile(r"[A-Za-z0-9._~!$&'()*,;=:@-]+\Z")
PARAM_RE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(\+?)\}\Z")
MAX_PATH = 512


def normalise_method(method: str) -> str:
    m = (method or "").upper()
    if m not in METHODS:
        raise ValidationError(f"method must be one of {', '.join(METHODS)}; got {method!r}", field="method")
    return m


def parse_path(path: str) -> tuple[tuple[str, str], ...]:
    """Split a route path into ``(kind, value)`` segments: kind is lit, param or greedy."""
    if not isinstance(path, str) or not path.startswith("/"):
        raise ValidationError(f"path must start with '/', got {path!r}", field="path")
    if len(path) > MAX_PATH:
        raise ValidationError(f"path is longer than {MAX_PATH} characters", field="path")
    if path.startswith(RESERVED_PREFIXES) or path in ("/_", "/v1"):
        raise ValidationError(f"paths under {' and '.join(RESERVED_PREFIXES)} are reserved by the platform; "
                              "choose another prefix", field="path")
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
    return f"{normalise_method(method)} {shape(parse_path(path))}"


@dataclass(frozen=True)
class Match:
    trigger: Trigger
    params: dict[str, str]
    route_key: str


class RouteTable:
    """Immutable table built from the trigger list; rebuild it when triggers change."""

    def __init__(self, triggers: list[Trigger]):
        compiled = []
        for t in triggers:
            segs = parse_path(t.path)
            literal = sum(1 for k, _ in segs if k == "lit")
            greedy = 1 if segs and segs[-1][0] == "greedy" else 0
            specificity = (literal, -greedy, len(segs), 0 if t.method == "ANY" else 1)
            compiled.append((specificity, segs, t))
        compiled.sort(key=lambda c: c[0], reverse=True)
        self._routes = compiled
        # Routes of literal segments only, by (method, segments): no other route can be more
        # specific for a path they match, so a hit needs no scan of the table.
        self._literal: dict[tuple[str, tuple[str, ...]], Match] = {}
        for _, segs, t in compiled:
            if all(kind == "lit" for kind, _ in segs):
                self._literal[(t.method, tuple(v for _, v in segs))] = Match(t, {}, f"{t.method} {t.path}")

    def __len__(self) -> int:
        return len(self._routes)

    def match(self, method: str, path: str) -> Match:
        parts = [unquote(p) for p in path.strip("/").split("/")] if path.strip("/") else []
        method = method.upper()
        literal = self._literal
        if literal and method != "HEAD":  # HEAD's fallback to GET routes is left to the scan
            key = tuple(parts)
            hit = literal.get((method, key)) or literal.get(("ANY", key))
            if hit is not None:
                return Match(hit.trigger, {}, hit.route_key)
        path_matched = False
        for _, segs, trigger in self._routes:
            params = _match_segments(segs, parts)
            if params is None:
                continue
            path_matched = True
            if trigger.method in (method, "ANY") or (method == "HEAD" and trigger.method == "GET"):
                return Match(trigger, params, f"{trigger.method} {trigger.path}")
        if path_matched:
            raise MethodNotAllowed(f"{method} is not allowed on {path}")
        raise RouteNotFound(f"no trigger matches {method} {path}")


def _match_segments(segs, parts) -> dict[str, str] | None:
    params: dict[str, str] = {}
    for i, (kind, value) in enumerate(segs):
        if kind == "greedy":
            rest = parts[i:]
            if not rest:
                return None
            params[value] = "/".join(rest)
            return params
        if i >= len(parts):
            return None
        if kind == "lit":
            if parts[i] != value:
                return None
        else:
            if not parts[i]:
                return None
            params[value] = parts[i]
    return params if len(parts) == len(segs) else None
