"""Layers, as on Lambda: shared packages a function lists and finds under ``/opt`` at run time.

Each ``publish`` of a layer makes a new immutable version (``NAME:1``, ``NAME:2``, ...) whose package
is stored in the blob store by its sha256, like function code: two versions (or two layers) with the
same content share one package, and a node unpacks it once per digest (the scheduler's code cache).
A function lists up to five versions; a version cannot be deleted while a function lists it, so a
``NAME:VERSION`` always names the same bytes for as long as anything uses it.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

from appliance.core import codepkg
from appliance.core.errors import Conflict, NotFound, RevisionConflict, ValidationError
from appliance.core.model import LAYER_REF_RE, validate_name
from appliance.core.ports import BlobStore, MetadataStore

CAS_ATTEMPTS = 20


def layer_key(name: str, version: int) -> str:
    return f"layers/{name}/{version:08d}"


@dataclass(frozen=True)
class LayerVersion:
    name: str
    version: int
    digest: str          # sha256 of the package, hex
    size: int            # bytes of the zip
    files: int
    unpacked_size: int
    created_at: float
    description: str = ""

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_api(self) -> dict:
        return {**self.to_dict(), "ref": self.ref}


class LayerStore:
    """Layer versions over the metadata store (``layers/<name>/<version>``) and the blob store."""

    def __init__(self, meta: MetadataStore, blobs: BlobStore, limits: codepkg.Limits):
        self.meta = meta
        self.blobs = blobs
        self.limits = limits

    def publish(self, name: str, data: bytes, description: str = "") -> LayerVersion:
        """Store a package (a zip) as the layer's next version; the package is written first."""
        validate_name(name)
        if not isinstance(description, str) or len(description) > 256:
            raise ValidationError("description must be a string of at most 256 characters", field="description")
        info = codepkg.inspect_zip(data, self.limits)
        self.blobs.put(info.digest, data)
        for _ in range(CAS_ATTEMPTS):
            number = max([v.version for v in self.versions(name)], default=0) + 1
            layer = LayerVersion(name=name, version=number, digest=info.digest, size=info.size, files=info.files,
                                 unpacked_size=info.unpacked_size, created_at=time.time(), description=description)
            try:
                self.meta.put(layer_key(name, number), layer.to_dict(), expected_revision=0)
                return layer
            except RevisionConflict:
                continue
        raise Conflict(f"layer {name!r} is receiving concurrent publishes; try again")

    def versions(self, name: str) -> list[LayerVersion]:
        return [LayerVersion(**doc) for _, doc, _ in self.meta.list(f"layers/{name}/")]

    def all(self) -> list[LayerVersion]:
        return [LayerVersion(**doc) for _, doc, _ in self.meta.list("layers/")]

    def get(self, ref: str) -> LayerVersion:
        """The version a ``NAME:VERSION`` names; NotFound when there is none."""
        m = LAYER_REF_RE.match(ref or "")
        if not m:
            raise ValidationError(f'layer {ref!r} is not "NAME:VERSION"', field="layers")
        got = self.meta.get(layer_key(m.group(1), int(m.group(2))))
        if not got:
            raise NotFound(f"layer version {ref} does not exist; `faas layer ls` lists the published ones")
        return LayerVersion(**got[0])

    def check_refs(self, refs) -> None:
        """Refuse (400) a function's layer list that names a version never published (or deleted)."""
        for ref in refs:
            try:
                self.get(ref)
            except NotFound as exc:
                raise ValidationError(exc.message, field="layers") from None

    def users(self, ref: str) -> list[str]:
        """Functions that list the layer version ``ref``."""
        return sorted(doc["config"]["name"] for _, doc, _ in self.meta.list("functions/")
                      if ref in (doc.get("config", {}).get("layers") or ()))

    def delete(self, ref: str) -> LayerVersion:
        """Delete a version nothing uses (409 naming the functions otherwise); its package goes when no
        other layer version or function version has the same digest."""
        layer = self.get(ref)
        users = self.users(ref)
        if users:
            raise Conflict(f"layer version {ref} is used by {', '.join(users)}; remove it from "
                           f"{'them' if len(users) > 1 else 'it'} first", field="layers")
        self.meta.delete(layer_key(layer.name, layer.version))
        if layer.digest not in self.digests_in_use():
            self.blobs.delete(layer.digest)
        return layer

    def digests_in_use(self) -> set[str]:
        """Every package a layer version or a function version refers to."""
        out = {doc.get("digest") for _, doc, _ in self.meta.list("layers/")}
        out |= {doc.get("digest") for _, doc, _ in self.meta.list("versions/")}
        return out
