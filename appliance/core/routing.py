"""Published versions and aliases: the pure part (names, qualifiers, weights, the pick).

A target is ``NAME`` (= ``$LATEST``), ``NAME:N`` (published version N) or ``NAME:ALIAS``. An
alias points at one published version and may send a share of its requests to one other version
(``weights``: ``{"M": 0.1}``), as a Lambda alias's routing configuration does. Which version serves
one request is :func:`pick_version` of the alias and one random draw, so the choice can be tested
without randomness and costs one comparison per request.

What a function's aliases and published version numbers are travels in its stored record
(:class:`Routing`, the ``routing`` field of the function document): resolving an alias reads the
record the edge already holds, never the metadata store.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from appliance.core.errors import AliasNotFound, ValidationError, VersionNotFound

LATEST = "$LATEST"
#: Lambda's alias names; a name of digits only would read as a version number.
ALIAS_RE = re.compile(r"[A-Za-z0-9_-]{1,128}\Z")
VERSION_RE = re.compile(r"[1-9][0-9]{0,8}\Z")
#: At most this many aliases per function, and published versions kept per function (bounded growth).
MAX_ALIASES = 100
MAX_PUBLISHED = 1000
DESCRIPTION_MAX = 256


def split_target(target: str) -> tuple[str, str | None]:
    """``"hello:live"`` -> ("hello", "live"); ``"hello"`` and ``"hello:$LATEST"`` -> ("hello", None).
    No validation: the name and the qualifier are checked where they are used."""
    name, sep, qualifier = target.partition(":")
    if not sep or qualifier == LATEST:
        return name, None
    return name, qualifier


def validate_qualifier(qualifier: Any, field_name: str = "qualifier") -> str | None:
    """A qualifier as a client gave it: None or ``$LATEST`` (unqualified), a version number, or an alias name."""
    if qualifier is None or qualifier == LATEST or qualifier == "":
        return None
    if not isinstance(qualifier, str) or not (VERSION_RE.match(qualifier) or ALIAS_RE.match(qualifier)):
        raise ValidationError(f"qualifier must be $LATEST, a published version number or an alias name "
                              f"([A-Za-z0-9_-], at most 128); got {qualifier!r}", field=field_name)
    return qualifier


def validate_alias_name(name: Any) -> str:
    if not isinstance(name, str) or not ALIAS_RE.match(name) or name.isdigit():
        raise ValidationError(f"alias name must be 1-128 characters of letters, digits, '-' and '_', not all "
                              f"digits (those are version numbers) and not $LATEST; got {name!r}", field="name")
    return name


def _version_number(value: Any, field_name: str) -> int:
    if isinstance(value, str) and VERSION_RE.match(value):
        value = int(value)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 999_999_999:
        raise ValidationError(f"{field_name} must be a published version number (1, 2, ...); got {value!r}",
                              field=field_name)
    return value


@dataclass(frozen=True)
class Alias:
    """A name for a published version, with at most one extra version taking ``weight`` of the requests."""

    name: str
    version: int
    #: The other version and its share in (0, 1), or None.
    extra: tuple[int, float] | None = None
    description: str = ""
    updated_at: float = 0.0

    def to_doc(self) -> dict:
        return {"version": self.version, "weights": {str(self.extra[0]): self.extra[1]} if self.extra else {},
                "description": self.description, "updated_at": self.updated_at}

    @classmethod
    def from_doc(cls, name: str, doc: dict) -> Alias:
        weights = doc.get("weights") or {}
        extra = next(((int(k), float(v)) for k, v in weights.items()), None)
        return cls(name=name, version=int(doc["version"]), extra=extra, description=doc.get("description") or "",
                   updated_at=doc.get("updated_at", 0.0))

    def to_api(self, function: str) -> dict:
        return {"name": self.name, "function": function, **self.to_doc()}

    def versions(self) -> tuple[int, ...]:
        return (self.version, self.extra[0]) if self.extra else (self.version,)


def validate_alias(name: Any, data: Any, *, now: float) -> Alias:
    """The body of ``PUT /v1/functions/{name}/aliases/{alias}``: ``{"version": N, "weights": {"M": 0.1},
    "description": ""}``. Whether the versions exist is the store's check."""
    name = validate_alias_name(name)
    if not isinstance(data, dict):
        raise ValidationError('give the alias as {"version": N, "weights": {"M": 0.1}}', field="body")
    unknown = sorted(set(data) - {"version", "weights", "description", "name", "function"})
    if unknown:
        raise ValidationError(f"unknown field {unknown[0]!r}; an alias has version, weights and description",
                              field=unknown[0])
    if data.get("version") is None:
        raise ValidationError("version is required: the published version the alias points at", field="version")
    version = _version_number(data.get("version"), "version")
    weights = data.get("weights")
    weights = {} if weights is None else weights
    if not isinstance(weights, dict):
        raise ValidationError('weights must be an object {"VERSION": share}, for example {"2": 0.1}', field="weights")
    if len(weights) > 1:
        raise ValidationError("an alias may route to at most one extra version", field="weights")
    extra = None
    for key, share in weights.items():
        other = _version_number(key, "weights")
        if other == version:
            raise ValidationError(f"the extra version cannot be the alias's own version {version}", field="weights")
        if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 < share < 1:
            raise ValidationError(f"the weight of version {other} must be a number between 0 and 1 (exclusive); "
                                  f"got {share!r}", field="weights")
        extra = (other, float(share))
    description = data.get("description")
    description = "" if description is None else description
    if not isinstance(description, str) or len(description) > DESCRIPTION_MAX:
        raise ValidationError(f"description must be a string of at most {DESCRIPTION_MAX} characters",
                              field="description")
    return Alias(name=name, version=version, extra=extra, description=description, updated_at=now)


def pick_version(alias: Alias, draw: float) -> int:
    """The version one request through ``alias`` runs, for a uniform ``draw`` in [0, 1): the extra
    version when the draw falls below its weight, else the alias's own."""
    if alias.extra is not None and draw < alias.extra[1]:
        return alias.extra[0]
    return alias.version


@dataclass(frozen=True)
class Routing:
    """A function's published version numbers and aliases, as its record carries them."""

    published: tuple[int, ...] = ()
    aliases: dict[str, Alias] = field(default_factory=dict)
    #: The highest number ever given: numbers are never reused, even after a delete.
    last: int = 0

    def __bool__(self) -> bool:
        return bool(self.published or self.aliases or self.last)

    def to_doc(self) -> dict:
        return {"published": list(self.published), "last": self.last,
                "aliases": {n: a.to_doc() for n, a in self.aliases.items()}}

    @classmethod
    def from_doc(cls, doc: dict | None) -> Routing:
        if not doc:
            return EMPTY
        return cls(published=tuple(doc.get("published") or ()), last=int(doc.get("last") or 0),
                   aliases={n: Alias.from_doc(n, a) for n, a in (doc.get("aliases") or {}).items()})

    def users_of(self, version: int) -> list[str]:
        """Aliases that route to ``version``."""
        return sorted(a.name for a in self.aliases.values() if version in a.versions())

    def routed(self) -> set[int]:
        return {v for a in self.aliases.values() for v in a.versions()}


EMPTY = Routing()


def executed(qualifier: str | None, routing: Routing, draw: float) -> tuple[int | None, str | None]:
    """(published version to run or None for $LATEST, alias name or None) of a request to a
    qualifier; raises Version.NotFound / Alias.NotFound (from errors) for a target that does not exist."""
    if qualifier is None:
        return None, None
    if qualifier.isdigit():
        n = int(qualifier)
        if n not in routing.published:
            raise VersionNotFound(f"the function has no published version {qualifier}; see `faas published`")
        return n, None
    alias = routing.aliases.get(qualifier)
    if alias is None:
        raise AliasNotFound(f"the function has no alias {qualifier!r}; see `faas alias ls`")
    return pick_version(alias, draw), alias.name
