"""Trigger keys in the function store: made once, stored hashed (bearer) or write-only (hmac),
loaded with the route table for the edge, revoked, and gone with their trigger."""

from __future__ import annotations

import pytest

from appliance.backends.local_blob import LocalBlobStore
from appliance.backends.sqlite_meta import SqliteMetadataStore
from appliance.core import codepkg
from appliance.core.errors import Conflict, NotFound
from appliance.core.function_store import FunctionStore
from appliance.core.model import FunctionConfig
from appliance.core.trigger_policy import MAX_KEYS, hash_key


@pytest.fixture
def store(tmp_path):
    meta = SqliteMetadataStore(tmp_path / "m.sqlite3")
    s = FunctionStore(meta, LocalBlobStore(tmp_path / "b"), codepkg.Limits(), cache_ttl_s=0)
    s.create(FunctionConfig(name="fn"))
    yield s
    meta.close()


def stored_docs(store) -> str:
    return repr(store.meta.list("triggers/")) + repr(store.meta.list("triggerkeys/"))


def test_bearer_keys_are_stored_as_hashes_and_reach_the_route_table(store):
    store.add_trigger("fn", "GET", "/a", auth={"type": "bearer"})
    record, key = store.create_trigger_key("GET", "/a", "ci")
    assert key.startswith("fk_") and key not in stored_docs(store) and hash_key(key) in stored_docs(store)
    assert "key" not in record and record["hint"] == key[:7]
    trigger = store.routes().match("GET", "/a").trigger
    assert trigger.keys == (hash_key(key),) and "keys" not in trigger.to_dict()
    assert [k["name"] for k in store.trigger_keys("GET", "/a")] == ["ci"]
    with pytest.raises(Conflict):
        store.create_trigger_key("GET", "/a", "ci")
    store.revoke_trigger_key("GET", "/a", "ci")
    assert store.routes().match("GET", "/a").trigger.keys == ()
    with pytest.raises(NotFound):
        store.revoke_trigger_key("GET", "/a", "ci")


def test_hmac_secrets_are_kept_for_the_edge_but_never_listed(store):
    store.add_trigger("fn", "POST", "/hook", auth="hmac")
    record, secret = store.create_trigger_key("POST", "/hook")
    assert secret.startswith("fhs_") and record["type"] == "hmac"
    assert store.routes().match("POST", "/hook").trigger.keys == (secret,)
    assert secret not in repr(store.trigger_keys("POST", "/hook")) + repr([t.to_dict() for t in store.triggers()])


def test_keys_only_for_bearer_and_hmac_triggers_and_bounded(store):
    store.add_trigger("fn", "GET", "/open")
    with pytest.raises(Conflict):
        store.create_trigger_key("GET", "/open")
    store.add_trigger("fn", "GET", "/many", auth="bearer")
    for _ in range(MAX_KEYS):
        store.create_trigger_key("GET", "/many")
    with pytest.raises(Conflict):
        store.create_trigger_key("GET", "/many")


def test_keys_go_with_their_trigger_and_do_not_open_a_new_one(store):
    store.add_trigger("fn", "GET", "/a", auth="bearer")
    store.create_trigger_key("GET", "/a")
    store.remove_trigger("GET", "/a")
    assert store.meta.list("triggerkeys/") == []
    store.add_trigger("fn", "GET", "/a", auth="bearer")
    store.create_trigger_key("GET", "/a")
    store.delete("fn")
    assert store.meta.list("triggerkeys/") == [] and store.meta.list("triggers/") == []
