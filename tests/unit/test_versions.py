"""Published versions and aliases: the weighted pick, qualifiers, validation, and the store's rules."""

import pytest

from appliance.backends.local_blob import LocalBlobStore
from appliance.backends.sqlite_meta import SqliteMetadataStore
from appliance.core import codepkg, routing
from appliance.core.errors import (
    AliasInUse,
    AliasNotFound,
    NoCode,
    ValidationError,
    VersionInUse,
    VersionNotFound,
)
from appliance.core.function_store import FunctionStore
from appliance.core.model import FunctionConfig, InstanceSpec, pool_key
from appliance.core.routing import Alias, Routing, pick_version, split_target, validate_alias

SRC = b"def handler(event, context):\n    return 'hi'\n"


# -- the pure pieces ---------------------------------------------------------------------

def test_an_alias_without_weights_always_runs_its_version():
    a = Alias(name="live", version=3)
    assert {pick_version(a, d) for d in (0.0, 0.25, 0.5, 0.999)} == {3}


def test_the_extra_version_takes_the_draws_below_its_weight():
    a = Alias(name="live", version=1, extra=(2, 0.25))
    assert pick_version(a, 0.0) == 2 and pick_version(a, 0.2499) == 2
    assert pick_version(a, 0.25) == 1 and pick_version(a, 0.9999) == 1
    # Over an even spread of draws the share is the weight exactly.
    draws = [i / 1000 for i in range(1000)]
    assert sum(pick_version(a, d) == 2 for d in draws) == 250


@pytest.mark.parametrize("target, want", [
    ("hello", ("hello", None)), ("hello:$LATEST", ("hello", None)), ("hello:3", ("hello", "3")),
    ("hello:live", ("hello", "live")), ("hello:", ("hello", "")),
])
def test_targets_split_into_name_and_qualifier(target, want):
    assert split_target(target) == want


@pytest.mark.parametrize("bad", ["a b", "x" * 129, "li/ve", "0x:y", 5])
def test_bad_qualifiers_are_refused_with_the_field(bad):
    with pytest.raises(ValidationError) as err:
        routing.validate_qualifier(bad, "function")
    assert err.value.field == "function"


@pytest.mark.parametrize("name", ["live", "prod-1", "A_b", "x" * 128])
def test_alias_names_as_lambda_takes_them(name):
    assert routing.validate_alias_name(name) == name


@pytest.mark.parametrize("name", ["123", "$LATEST", "", "x" * 129, "li ve", "a:b", None])
def test_alias_names_lambda_refuses_are_refused(name):
    with pytest.raises(ValidationError) as err:
        routing.validate_alias_name(name)
    assert err.value.field == "name"


@pytest.mark.parametrize("body, field", [
    ({}, "version"), ({"version": 0}, "version"), ({"version": "x"}, "version"), ({"version": True}, "version"),
    ({"version": 1, "weights": {"2": 0.1, "3": 0.1}}, "weights"), ({"version": 1, "weights": {"1": 0.5}}, "weights"),
    ({"version": 1, "weights": {"2": 1}}, "weights"), ({"version": 1, "weights": {"2": 0}}, "weights"),
    ({"version": 1, "weights": {"2": 1.5}}, "weights"), ({"version": 1, "weights": {"2": "0.1"}}, "weights"),
    ({"version": 1, "weights": {"x": 0.1}}, "weights"), ({"version": 1, "weights": [1]}, "weights"),
    ({"version": 1, "description": 5}, "description"), ({"version": 1, "colour": "red"}, "colour"),
])
def test_bad_alias_bodies_name_the_field(body, field):
    with pytest.raises(ValidationError) as err:
        validate_alias("live", body, now=0.0)
    assert err.value.field == field


def test_an_alias_body_round_trips_through_its_stored_form():
    a = validate_alias("live", {"version": "2", "weights": {"3": 0.1}, "description": "canary"}, now=5.0)
    assert a == Alias(name="live", version=2, extra=(3, 0.1), description="canary", updated_at=5.0)
    assert Alias.from_doc("live", a.to_doc()) == a
    r = Routing(published=(1, 2, 3), aliases={"live": a}, last=3)
    assert Routing.from_doc(r.to_doc()) == r and r.routed() == {2, 3} and r.users_of(3) == ["live"]


def test_a_request_resolves_to_a_version_or_a_clear_404():
    r = Routing(published=(1, 2), aliases={"live": Alias(name="live", version=1, extra=(2, 0.5))}, last=2)
    assert routing.executed(None, r, 0.1) == (None, None)
    assert routing.executed("2", r, 0.1) == (2, None)
    assert routing.executed("live", r, 0.1) == (2, "live") and routing.executed("live", r, 0.9) == (1, "live")
    with pytest.raises(VersionNotFound):
        routing.executed("7", r, 0.0)
    with pytest.raises(AliasNotFound):
        routing.executed("beta", r, 0.0)


def test_pools_of_published_versions_are_apart_from_latest():
    assert pool_key("f") == "f" and pool_key("f", 3) == "f:3"


# -- the store ---------------------------------------------------------------------------

@pytest.fixture
def store(tmp_path):
    meta = SqliteMetadataStore(tmp_path / "meta.db")
    s = FunctionStore(meta, LocalBlobStore(tmp_path / "blobs"), codepkg.Limits(), cache_ttl_s=0)
    yield s
    meta.close()


def test_publishing_snapshots_code_and_settings_and_numbers_from_one(store):
    store.create(FunctionConfig.from_request({"name": "f", "environment": {"COLOUR": "blue"}}))
    with pytest.raises(NoCode):
        store.published.publish("f")
    store.upload_code("f", SRC, filename="index.py")
    v1, made = store.published.publish("f", "first")
    assert made and v1.version == 1 and v1.code_version == 1 and v1.description == "first"
    again, made = store.published.publish("f")
    assert not made and again.version == 1  # nothing changed: the same version, as Lambda does
    store.update("f", {"environment": {"COLOUR": "green"}})
    v2, made = store.published.publish("f")
    assert made and v2.version == 2 and v2.code_version == 1
    store.upload_code("f", SRC + b"# v2\n", filename="index.py")
    v3, _ = store.published.publish("f")
    assert (v3.version, v3.code_version) == (3, 2)
    assert [v.version for v in store.published.list("f")] == [3, 2, 1]
    # What runs version 1 is its snapshot, whatever the function is now.
    base = store.get("f")
    one = store.published.executable(base, 1)
    assert one.config.environment == {"COLOUR": "blue"} and one.version == 1 and one.digest == v1.digest
    assert InstanceSpec.of(one, published=1).pool == "f:1"
    # Settings changes keep the aliases and published numbers (they live in the record).
    store.update("f", {"memory_mb": 256})
    assert store.get("f").routing.published == (1, 2, 3)


def test_aliases_need_existing_versions_and_block_deletes(store):
    store.create(FunctionConfig.from_request({"name": "f"}))
    store.upload_code("f", SRC, filename="index.py")
    store.published.publish("f")
    with pytest.raises(VersionNotFound) as err:
        store.published.set_alias("f", validate_alias("live", {"version": 1, "weights": {"2": 0.1}}, now=0))
    assert err.value.field == "weights"
    store.upload_code("f", SRC + b"# 2\n", filename="index.py")
    store.published.publish("f")
    store.published.set_alias("f", validate_alias("live", {"version": 1, "weights": {"2": 0.1}}, now=0))
    with pytest.raises(VersionInUse):
        store.published.delete("f", 2)
    store.add_trigger("f:live", "GET", "/live")
    with pytest.raises(AliasInUse):
        store.published.delete_alias("f", "live")
    assert [t.function for t in store.triggers(function="f")] == ["f:live"]
    store.remove_trigger("GET", "/live")
    store.published.delete_alias("f", "live")
    store.published.delete("f", 2)
    assert [v.version for v in store.published.list("f")] == [1]
    # Numbers are never reused.
    store.update("f", {"memory_mb": 512})
    assert store.published.publish("f")[0].version == 3


def test_deleting_the_function_deletes_its_versions_and_their_code_when_unused(store):
    store.create(FunctionConfig.from_request({"name": "f"}))
    _, cv1, _ = store.upload_code("f", SRC, filename="index.py")
    store.published.publish("f")
    assert cv1.digest in store.digests_in_use()
    store.delete("f")
    assert store.meta.list("published/") == []
    assert not store.blobs.exists(cv1.digest)


def test_a_function_made_again_under_its_name_never_runs_the_old_ones_snapshot(store):
    store.create(FunctionConfig.from_request({"name": "f", "environment": {"COLOUR": "old"}}))
    store.upload_code("f", SRC, filename="index.py")
    store.published.publish("f")
    assert store.published.executable(store.get("f"), 1).config.environment == {"COLOUR": "old"}
    store.delete("f")
    store.create(FunctionConfig.from_request({"name": "f", "environment": {"COLOUR": "new"}}))
    store.upload_code("f", SRC, filename="index.py")
    assert store.published.publish("f")[0].version == 1
    assert store.published.executable(store.get("f"), 1).config.environment == {"COLOUR": "new"}


def test_a_record_journaled_before_the_version_columns_is_replayed_as_latest(tmp_path):
    import json

    from appliance.core.journal import Journal
    from appliance.core.records import InvocationRecord, RecordStore, _row

    db = tmp_path / "records.db"
    RecordStore(db).close()
    old = list(_row(InvocationRecord(request_id="r-old", function="f", version=1, started_at=1.0)))[:-2]
    journal = Journal(db.with_name(db.name + ".journal"))
    journal.append(json.dumps(old).encode())
    journal.close()
    s = RecordStore(db)
    try:
        assert s.recovered == 1
        (row,) = s.query("f", limit=10)
        assert (row["request_id"], row["executed_version"], row["alias"]) == ("r-old", "$LATEST", None)
    finally:
        s.close()
