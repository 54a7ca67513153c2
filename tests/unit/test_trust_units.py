"""The pure parts of trust: token decisions, durations, hosts, secrets sealing and merging, error redaction."""

from __future__ import annotations

import pytest

from appliance.backends.fernet_secrets import FernetSecretBox, SecretsUnavailable
from appliance.backends.sqlite_meta import SqliteMetadataStore
from appliance.config import Settings
from appliance.control.auth import allowed_hosts, bearer, host_allowed, host_name
from appliance.core import tokens
from appliance.core.errors import Conflict, FunctionError, NotFound, QueueFull, ValidationError
from appliance.core.model import MASK, FunctionConfig, FunctionRecord, InstanceSpec
from appliance.edge.events import public_error


def tok(scope, functions=None, expires_at=None):
    return tokens.Token(name="t", scope=scope, sha256="0" * 64, functions=functions, expires_at=expires_at)


@pytest.mark.parametrize("scope,allowed", [
    ("admin", {"read", "records", "invoke", "deploy", "admin"}),
    ("deploy", {"read", "records", "invoke", "deploy"}),
    ("invoke", {"records", "invoke"}),
    ("read", {"read", "records"}),
])
def test_each_scope_allows_exactly_its_actions(scope, allowed):
    for action in ("read", "records", "invoke", "deploy", "admin"):
        assert tokens.allows(tok(scope), action, "fn", now=0) == (action in allowed), (scope, action)


def test_a_pattern_narrows_to_matching_functions():
    t = tok("deploy", "shop-*")
    assert tokens.allows(t, "deploy", "shop-cart", 0)
    assert not tokens.allows(t, "deploy", "payroll", 0)
    assert not tokens.allows(t, "deploy", "", 0)          # creating a function without a name
    assert tokens.allows(t, "read", None, 0)              # a listing, filtered afterwards


def test_an_expired_token_allows_nothing():
    t = tok("admin", expires_at=100.0)
    assert tokens.allows(t, "read", None, now=99.9)
    assert not tokens.allows(t, "read", None, now=100.0)


@pytest.mark.parametrize("raw,seconds", [("3600s", 3600), ("90m", 5400), ("12h", 43200), ("30d", 2592000),
                                         ("2w", 1209600)])
def test_durations(raw, seconds):
    assert tokens.parse_duration(raw) == seconds


@pytest.mark.parametrize("raw", ["", "0d", "30", "1y", "-1d", "d"])
def test_bad_durations_say_what_is_accepted(raw):
    with pytest.raises(ValidationError, match="30d"):
        tokens.parse_duration(raw)


@pytest.mark.parametrize("body,field", [
    ({"name": "Bad Name", "scope": "read"}, "name"),
    ({"name": "ok", "scope": "root"}, "scope"),
    ({"name": "ok", "scope": "read", "functions": "x-*"}, "functions"),
    ({"name": "ok", "scope": "admin", "functions": "x-*"}, "functions"),
    ({"name": "ok", "scope": "deploy", "functions": "../etc"}, "functions"),
    ({"name": "ok", "scope": "read", "expires": "soon"}, "expires"),
    ({"name": "ok", "scope": "read", "owner": "me"}, "owner"),
])
def test_token_requests_are_validated(body, field):
    with pytest.raises(ValidationError) as e:
        tokens.validate_request(body, now=0)
    assert e.value.field == field


def test_token_store_keeps_hashes_and_finds_by_constant_time_comparison(tmp_path):
    meta = SqliteMetadataStore(tmp_path / "m.sqlite3")
    store = tokens.TokenStore(meta, cache_ttl_s=0)
    token, secret = store.create("ci", "deploy", functions="ci-*")
    assert secret.startswith("faas_") and len(secret) >= 48
    assert secret not in str(meta.list("tokens/"))
    assert store.authenticate(secret) == token
    assert store.authenticate(secret + "x") is None
    with pytest.raises(Conflict):
        store.create("ci", "read")
    assert store.revoke("ci").name == "ci"
    assert store.authenticate(secret) is None
    with pytest.raises(NotFound):
        store.revoke("ci")
    assert not store.has_admin(now=0)
    assert store.put_hash("admin", "admin", tokens.digest("x" * 40), created_by="test")
    assert not store.put_hash("admin", "admin", tokens.digest("x" * 40), created_by="test")  # unchanged
    assert store.has_admin(now=0) and store.authenticate("x" * 40).name == "admin"
    meta.close()


def test_host_names_and_the_allowed_list():
    assert host_name("Example.com:8081") == "example.com"
    assert host_name("[::1]:8081") == "::1"
    allowed = allowed_hosts("", ["127.0.0.1"], ["10.0.0.5", ""])
    assert host_allowed("127.0.0.1:8081", allowed) and host_allowed("localhost:8081", allowed)
    assert host_allowed("[::1]:8081", allowed) and host_allowed("10.0.0.5:8081", allowed)
    assert host_allowed("127.0.0.2:8081", allowed)  # any loopback address is this machine
    assert not host_allowed("attacker.example:8081", allowed)
    assert not host_allowed("", allowed)
    assert allowed_hosts("*", ["127.0.0.1"]) is None and host_allowed("anything", None)
    assert allowed_hosts("api.example.com, [::1]", []) == frozenset({"api.example.com", "::1"})


def test_bearer_header():
    assert bearer("Bearer abc") == "abc" and bearer("bearer  abc ") == "abc"
    assert bearer("Basic abc") is None and bearer("Bearer ") is None


def test_secrets_are_sealed_with_the_key_and_refused_with_another():
    box = FernetSecretBox(FernetSecretBox.generate_key())
    sealed = box.seal({"K": "value"})
    assert "value" not in sealed and box.open(sealed) == {"K": "value"}
    with pytest.raises(SecretsUnavailable):
        FernetSecretBox(FernetSecretBox.generate_key()).open(sealed)
    with pytest.raises(SecretsUnavailable):
        FernetSecretBox(None).seal({"K": "v"})
    with pytest.raises(ValidationError):
        FernetSecretBox("not-a-key")


def test_secrets_merge_on_update_and_are_masked_in_every_view():
    base = FunctionConfig.from_request({"name": "f", "secrets": {"A": "1", "B": "2"}})
    new = FunctionConfig.from_request({"secrets": {"A": MASK, "B": None, "C": "3"}}, base=base, name="f")
    assert new.secrets == {"A": "1", "C": "3"}
    assert FunctionConfig.from_request({"memory_mb": 256}, base=new, name="f").secrets == {"A": "1", "C": "3"}
    record = FunctionRecord(config=new)
    assert record.to_api()["secrets"] == {"A": MASK, "C": MASK}
    assert "secrets" not in record.to_doc()["config"]
    assert "'3'" not in repr(new)
    spec = InstanceSpec.of(FunctionRecord(config=new, version=1, digest="d"))
    assert spec.environment == {"A": "1", "C": "3"} and "'3'" not in repr(spec)
    with pytest.raises(ValidationError, match="no value yet"):
        FunctionConfig.from_request({"secrets": {"Z": MASK}}, base=base, name="f")
    with pytest.raises(ValidationError, match="both"):
        FunctionConfig.from_request({"name": "f", "environment": {"A": "x"}, "secrets": {"A": "y"}})
    with pytest.raises(ValidationError) as e:
        FunctionConfig.from_request({"name": "f", "secrets": {"K": 12345}})
    assert "12345" not in e.value.message
    with pytest.raises(ValidationError):
        FunctionConfig.from_request({"name": "f", "expose_errors": "yes"})


def test_function_errors_are_redacted_for_trigger_callers_unless_exposed():
    err = FunctionError({"errorType": "Function.Error", "errorMessage": "boom at /srv/x", "stackTrace": ["a"]})
    shown = public_error(err, expose=False)
    body = shown.to_body("rid")
    assert body == {"error": {"code": "Function.Error", "message": shown.message, "requestId": "rid"}}
    assert "boom" not in shown.message and shown.status == 502
    assert public_error(err, expose=True) is err
    timeout = FunctionError({"errorType": "Function.Timeout", "errorMessage": "did not answer within 1 s",
                             "stackTrace": ["/srv/x"]}, status=504)
    shown = public_error(timeout, expose=False)
    assert shown.message == "did not answer within 1 s" and "function" not in shown.to_body()["error"]
    platform = QueueFull("the queue is full")
    assert public_error(platform, expose=False) is platform


def test_credential_settings_never_show_their_values():
    with pytest.raises(ValidationError) as e:
        Settings(admin_token="short-secret").validate()
    assert "short-secret" not in e.value.message
    assert "hidden-value" not in repr(Settings(internal_token="hidden-value" * 4))
    s = Settings(host="0.0.0.0", api_host="127.0.0.1")
    assert (s.edge_listen, s.api_listen) == ("0.0.0.0", "127.0.0.1")


def test_first_start_makes_one_admin_token_in_a_private_file(tmp_path):
    from types import SimpleNamespace

    from appliance.wiring import ensure_admin_token

    meta = SqliteMetadataStore(tmp_path / "m.sqlite3")
    c = SimpleNamespace(settings=Settings(data_dir=str(tmp_path)), tokens=tokens.TokenStore(meta, cache_ttl_s=0))
    path = ensure_admin_token(c)
    assert path == tmp_path / "admin.token" and (path.stat().st_mode & 0o777) == 0o600
    secret = path.read_text().strip()
    assert c.tokens.authenticate(secret).scope == "admin"
    assert ensure_admin_token(c) is None and path.read_text().strip() == secret  # one is enough
    c.tokens.revoke("admin")
    assert ensure_admin_token(c) == path and path.read_text().strip() != secret  # none left: a new one
    # Cluster mode: the hash from the settings, no file.
    other = tmp_path / "cluster"
    other.mkdir()
    seeded = SimpleNamespace(settings=Settings(data_dir=str(other), admin_token="sha256:" + tokens.digest("y" * 40)),
                             tokens=tokens.TokenStore(SqliteMetadataStore(other / "m.sqlite3"), cache_ttl_s=0))
    assert ensure_admin_token(seeded) is None and not (other / "admin.token").exists()
    assert seeded.tokens.authenticate("y" * 40).name == "admin"
    meta.close()


def test_listening_on_every_address_serves_this_machines_names_and_addresses():
    import socket

    allowed = allowed_hosts("", ["0.0.0.0"])
    assert socket.gethostname().lower() in allowed and "127.0.0.1" in allowed
    assert not host_allowed("rebound.attacker.example", allowed)
