import pytest

from appliance.core import codepkg
from appliance.backends.local_blob import LocalBlobStore
from appliance.backends.sqlite_meta import SqliteMetadataStore
from appliance.core.errors import Conflict, FunctionNotFound, RevisionConflict, UnsafeCode
from appliance.core.function_store import FunctionStore
from appliance.core.model import FunctionConfig

SRC = b"def handler(event, context):\n    return 'hi'\n"


@pytest.fixture
def store(tmp_path):
    meta = SqliteMetadataStore(tmp_path / "meta.db")
    s = FunctionStore(meta, LocalBlobStore(tmp_path / "blobs"), codepkg.Limits(), cache_ttl_s=0)
    yield s
    meta.close()


def cfg(name="f", **kw):
    return FunctionConfig.from_request({"name": name, **kw})


def test_metadata_check_and_set(tmp_path):
    m = SqliteMetadataStore(tmp_path / "m.db")
    r1 = m.put("k", {"a": 1}, expected_revision=0)
    with pytest.raises(RevisionConflict):
        m.put("k", {"a": 2}, expected_revision=0)
    r2 = m.put("k", {"a": 2}, expected_revision=r1)
    assert r2 > r1 and m.get("k") == ({"a": 2}, r2)
    with pytest.raises(RevisionConflict):
        m.put("k", {"a": 3}, expected_revision=r1)
    assert [k for k, _, _ in m.list("k")] == ["k"]
    m.delete("k")
    assert m.get("k") is None
    m.close()


def test_a_second_create_with_the_same_name_is_a_conflict(store):
    store.create(cfg())
    with pytest.raises(Conflict) as err:
        store.create(cfg())
    assert err.value.status == 409 and err.value.field == "name"


def test_each_upload_is_a_new_version_and_the_function_points_at_the_newest(store):
    store.create(cfg())
    r1, v1, warnings = store.upload_code("f", SRC, filename="index.py")
    r2, v2, _ = store.upload_code("f", SRC + b"# v2\n", filename="index.py")
    assert (v1.version, v2.version) == (1, 2) and warnings == []
    assert r2.version == 2 and r2.digest == v2.digest != v1.digest
    assert [v.version for v in store.versions("f")] == [1, 2]
    assert store.code(v1.digest) != store.code(v2.digest)


def test_a_package_without_the_handler_module_is_refused_and_nothing_is_stored(store):
    from appliance.core.errors import HandlerNotFound

    store.create(cfg(handler="main.handler"))
    with pytest.raises(HandlerNotFound, match="main.py"):
        store.upload_code("f", SRC, filename="index.py")
    assert store.get("f", fresh=True).version == 0 and store.versions("f") == []


def test_an_identical_upload_adds_no_version(store):
    store.create(cfg())
    _, first, _ = store.upload_code("f", SRC, filename="index.py")
    record, again, warnings = store.upload_code("f", SRC, filename="index.py")
    assert again == first and record.version == 1 and len(store.versions("f")) == 1
    assert warnings == ["the code is identical to version 1; no new version was made"]
    _, changed, _ = store.upload_code("f", SRC + b"\n# changed\n", filename="index.py")
    assert changed.version == 2


def test_code_is_stored_before_metadata_so_a_failed_store_changes_nothing(store, monkeypatch):
    store.create(cfg())

    def broken(digest, data):
        raise OSError("disk full")

    monkeypatch.setattr(store.blobs, "put", broken)
    with pytest.raises(OSError):
        store.upload_code("f", SRC, filename="index.py")
    assert store.get("f", fresh=True).version == 0 and store.versions("f") == []


def test_an_unsafe_package_leaves_no_trace(store):
    store.create(cfg())
    with pytest.raises(UnsafeCode):
        store.upload_code("f", b"not a zip")
    assert store.versions("f") == [] and store.get("f").version == 0


def test_updates_survive_a_concurrent_writer(store):
    store.create(cfg(memory_mb=128))
    real_put = store.meta.put
    raced = []

    def racing_put(key, doc, expected_revision=None):
        if key == "functions/f" and not raced:
            raced.append(1)
            current = store.meta.get(key)
            real_put(key, {**current[0], "config": {**current[0]["config"], "description": "other writer"}},
                     expected_revision=current[1])
        return real_put(key, doc, expected_revision)

    store.meta.put = racing_put
    record = store.update("f", {"memory_mb": 256})
    assert record.config.memory_mb == 256
    assert record.config.description == "other writer"


def test_deleting_a_function_removes_versions_triggers_and_unshared_code(store):
    store.create(cfg("a"))
    store.create(cfg("b"))
    _, va, _ = store.upload_code("a", SRC, filename="index.py")
    _, vb, _ = store.upload_code("b", SRC, filename="index.py")   # same bytes: shared package
    _, va2, _ = store.upload_code("a", SRC + b"#2\n", filename="index.py")
    store.add_trigger("a", "GET", "/a")
    store.delete("a")
    with pytest.raises(FunctionNotFound):
        store.get("a", fresh=True)
    assert store.triggers() == [] and store.versions("a") == []
    assert store.blobs.exists(vb.digest)         # still used by b
    assert not store.blobs.exists(va2.digest)    # only a used it


def test_trigger_conflicts_name_the_existing_route(store):
    store.create(cfg("a"))
    store.create(cfg("b"))
    store.add_trigger("a", "GET", "/users/{id}")
    with pytest.raises(Conflict) as err:
        store.add_trigger("b", "get", "/users/{uid}")
    assert "/users/{id}" in err.value.message and "'a'" in err.value.message
    store.add_trigger("b", "POST", "/users/{id}")
    assert store.routes().match("POST", "/users/1").trigger.function == "b"


def test_triggers_need_an_existing_function(store):
    with pytest.raises(FunctionNotFound):
        store.add_trigger("ghost", "GET", "/x")


def test_before_publish_sees_the_stored_code_while_the_function_still_points_at_the_old_version(store):
    store.create(cfg())
    store.upload_code("f", SRC, filename="index.py")
    seen = {}

    def prewarm(pending):
        seen["pending"] = (pending.version, pending.digest)
        seen["current"] = store.get("f", fresh=True).version
        seen["code"] = store.code(pending.digest)   # code first: it is already readable
        return "only 0 of 1 ready"

    record, version, warnings = store.upload_code("f", SRC + b"# v2\n", filename="index.py", before_publish=prewarm)
    assert seen["pending"] == (2, version.digest) and seen["current"] == 1 and seen["code"]
    assert record.version == 2 and "only 0 of 1 ready" in warnings
