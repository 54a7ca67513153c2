"""ConsulMetadataStore against the Consul double: check-and-set, and no lost updates when two
control planes race on one key."""
from __future__ import annotations

import threading

import pytest
import requests

from appliance.backends.consul_kv import ConsulMetadataStore, MetadataUnavailable
from appliance.core.errors import RevisionConflict


def test_get_put_list_delete(consul_double):
    s = ConsulMetadataStore(consul_double.url)
    assert s.get("functions/a") is None
    r1 = s.put("functions/a", {"n": 1}, expected_revision=0)
    assert s.get("functions/a") == ({"n": 1}, r1)
    with pytest.raises(RevisionConflict):
        s.put("functions/a", {"n": 2}, expected_revision=0)  # must not exist
    r2 = s.put("functions/a", {"n": 2}, expected_revision=r1)
    assert r2 > r1
    with pytest.raises(RevisionConflict):
        s.put("functions/a", {"n": 3}, expected_revision=r1)  # stale
    s.put("functions/b", {"n": 9})
    s.put("triggers/x", {"t": 1})
    assert [(k, d) for k, d, _ in s.list("functions/")] == [("functions/a", {"n": 2}), ("functions/b", {"n": 9})]
    with pytest.raises(RevisionConflict):
        s.delete("functions/a", expected_revision=r1)
    s.delete("functions/a", expected_revision=r2)
    assert s.get("functions/a") is None
    s.delete("functions/missing", expected_revision=0)  # absent, as expected
    # Stored under the prefix, readable by any client.
    assert consul_double.kv.get("faas/meta/functions/b") is not None


def test_two_stores_racing_on_one_key_lose_no_update(consul_double):
    a, b = ConsulMetadataStore(consul_double.url), ConsulMetadataStore(consul_double.url)
    a.put("counter", {"n": 0}, expected_revision=0)
    per_thread, conflicts = 25, []

    def bump(store):
        for _ in range(per_thread):
            while True:
                doc, rev = store.get("counter")
                try:
                    store.put("counter", {"n": doc["n"] + 1}, expected_revision=rev)
                    break
                except RevisionConflict:
                    conflicts.append(1)

    threads = [threading.Thread(target=bump, args=(s,)) for s in (a, b, a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert a.get("counter")[0] == {"n": 4 * per_thread}
    assert conflicts, "the writers did race (otherwise this test proves nothing)"


def test_a_write_by_another_client_makes_our_revision_stale(consul_double):
    """Another control plane writing the key (through any Consul client) turns our revision into
    a conflict instead of letting us overwrite its write."""
    a = ConsulMetadataStore(consul_double.url)
    rev = a.put("k", {"v": 1})
    requests.put(f"{consul_double.url}/v1/kv/faas/meta/k", data=b'{"v": 2}', timeout=5)
    with pytest.raises(RevisionConflict):
        a.put("k", {"v": 3}, expected_revision=rev)
    assert a.get("k")[0] == {"v": 2}


def test_consul_down_is_a_clear_error(consul_double):
    s = ConsulMetadataStore(consul_double.url, timeout_s=1)
    consul_double.down()
    with pytest.raises(MetadataUnavailable, match="did not answer"):
        s.get("x")
