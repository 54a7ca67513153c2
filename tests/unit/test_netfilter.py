"""The instances' packet filter: its rules (pure) and the uid blocks that keep appliances apart."""

from __future__ import annotations

from appliance.instances.netfilter import claim_uid_block, ruleset


def test_ruleset_scopes_to_the_blocks_uids_and_allows_the_edge_port_and_dns():
    script = ruleset("faas_uids_3", range(432000, 432003), (8080,))
    lines = [line.strip() for line in script.splitlines()]
    # Replaced atomically: a stale table of the same name goes in the same transaction.
    assert lines[:3] == ["table inet faas_uids_3 {}", "delete table inet faas_uids_3", "table inet faas_uids_3 {"]
    assert "432000 : 432000, 432001 : 432001, 432002 : 432002" in script       # a uid marks its connections
    assert "432000 . 432000, 432001 . 432001, 432002 . 432002" in script       # and may answer only those
    output = lines[lines.index("chain output {") + 2:lines.index("chain output {") + 4]
    assert output == ["ct direction reply ct mark 432000-432002 jump answer", "meta skuid 432000-432002 jump instance"]
    instance = lines[lines.index("chain instance {") + 1:]
    assert instance[:6] == ["fib daddr type != local accept", "tcp dport { 8080 } accept",
                            "meta l4proto { tcp, udp } th dport 53 accept",
                            "meta l4proto tcp ct state new ct mark set meta skuid map @mark_of accept",
                            "meta l4proto tcp accept", "reject with icmpx type admin-prohibited"]
    answer = lines[lines.index("chain answer {") + 1:]
    assert answer[:3] == ["meta skuid . ct mark @own accept",
                          "tcp flags & (syn | ack) == syn | ack tcp flags set rst | ack accept",
                          "meta skuid 0-4294967295 drop"]


def test_ruleset_without_an_edge_allows_no_port():
    assert "tcp dport {" not in ruleset("t", range(1, 3), ())


def test_uid_blocks_are_held_apart_and_freed_on_release(tmp_path):
    a = claim_uid_block(1000, 300, block=100, lock_dir=tmp_path)
    b = claim_uid_block(1000, 300, block=100, lock_dir=tmp_path)
    c = claim_uid_block(1000, 300, block=100, lock_dir=tmp_path)
    assert (a.uids, b.uids, c.uids) == (range(1200, 1300), range(1100, 1200), range(1000, 1100))
    full = claim_uid_block(1000, 300, block=100, lock_dir=tmp_path)
    assert full.fd is None and full.number == -1      # every block held: the filter will say it cannot apply
    b.release()
    again = claim_uid_block(1000, 300, block=100, lock_dir=tmp_path)
    assert again.uids == range(1100, 1200)
    for blk in (a, c, again):
        blk.release()
