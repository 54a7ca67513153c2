"""Layer versions (appliance/core/layers.py), layer lists, and the /opt merge of several layers."""

import hashlib
import io
import json
import zipfile

import pytest

from appliance.backends.local_blob import LocalBlobStore
from appliance.backends.sqlite_meta import SqliteMetadataStore
from appliance.core import codepkg
from appliance.core.errors import CodeNotFound, Conflict, NotFound, ValidationError
from appliance.core.function_store import FunctionStore
from appliance.core.layers import LayerStore
from appliance.core.model import FunctionConfig
from appliance.instances.launcher import ensure_layers


def zipped(files):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for k, v in files.items():
            zf.writestr(k, v)
    return buf.getvalue()


@pytest.fixture
def stores(tmp_path):
    meta, blobs = SqliteMetadataStore(tmp_path / "m.sqlite3"), LocalBlobStore(tmp_path / "blobs")
    return LayerStore(meta, blobs, codepkg.Limits()), FunctionStore(meta, blobs, codepkg.Limits())


def test_versions_are_immutable_and_content_addressed(stores):
    layers, _ = stores
    a = layers.publish("libs", zipped({"python/a.py": "A = 1\n"}))
    b = layers.publish("libs", zipped({"python/a.py": "A = 1\n"}))
    assert (a.ref, b.ref) == ("libs:1", "libs:2") and a.digest == b.digest
    assert layers.get("libs:1").digest == a.digest
    with pytest.raises(NotFound):
        layers.get("libs:3")


def test_functions_name_existing_versions_and_keep_them(stores):
    layers, functions = stores
    v = layers.publish("libs", zipped({"python/a.py": "A = 1\n"}))
    with pytest.raises(ValidationError):
        functions.create(FunctionConfig.from_request({"name": "f", "layers": ["libs:2"]}))
    functions.create(FunctionConfig.from_request({"name": "f", "layers": ["libs:1"]}))
    with pytest.raises(Conflict) as err:
        layers.delete("libs:1")
    assert "used by f" in err.value.message
    functions.delete("f")  # the function's garbage collection must not take the layer's package
    assert layers.blobs.get(v.digest)
    layers.delete("libs:1")
    with pytest.raises(CodeNotFound):
        layers.blobs.get(v.digest)


@pytest.mark.parametrize("value, fragment", [(["a"], "NAME:VERSION"), (["a:0"], "NAME:VERSION"), ("a:1", "list"),
                                             ([f"l{i}:1" for i in range(6)], "at most 5"), (["a:1", "a:2"], "twice")])
def test_layer_lists_are_validated(value, fragment):
    with pytest.raises(ValidationError) as err:
        FunctionConfig.from_request({"name": "f", "layers": value})
    assert fragment in err.value.message


def test_a_node_fetches_each_layer_once_and_merges_them_in_order(tmp_path):
    pkgs = [zipped({"python/shared.py": "WHO = 'first'\n", "python/one.py": "\n"}),
            zipped({"python/shared.py": "WHO = 'second'\n"})]
    entries = []
    for i, data in enumerate(pkgs):
        f = tmp_path / f"p{i}.zip"
        f.write_bytes(data)
        entries.append({"digest": hashlib.sha256(data).hexdigest(), "url": f.as_uri()})
    cache = tmp_path / "cache"
    merged = ensure_layers(json.dumps(entries), cache, codepkg.Limits())
    assert (merged / "python" / "shared.py").read_text() == "WHO = 'second'\n"
    assert (merged / "python" / "one.py").exists()
    for e in entries:  # fetched into the cache once; a second call needs no URL at all
        e["url"] = ""
    assert ensure_layers(json.dumps(entries), cache, codepkg.Limits()) == merged
    assert ensure_layers("[]", cache, codepkg.Limits()) is None
    single = ensure_layers(json.dumps(entries[:1]), cache, codepkg.Limits())
    assert single == cache / entries[0]["digest"]
