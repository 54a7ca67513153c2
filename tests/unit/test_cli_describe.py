"""``faas describe`` for people: every kind of trigger, and secrets only masked."""

from appliance.cli import _with_url, describe_text

FUNCTION = {"name": "vault", "runtime": "python3.11", "handler": "index.handler", "version": 1,
            "code_sha256": "ab" * 32, "memory_mb": 128, "timeout_s": 3, "concurrency": 1, "min_instances": 0,
            "max_instances": 10, "keep_alive_s": 90, "environment": {"MODE": "x"}, "secrets": {"API_KEY": "****"}}


def test_describe_shows_secrets_masked_and_schedule_and_queue_triggers():
    triggers = [{"method": "GET", "path": "/v", "function": "vault"},
                {"id": "schedule-0a1b2c3d4e", "kind": "schedule", "function": "vault", "schedule": "rate(5 minutes)"},
                {"id": "queue-0a1b2c3d4e", "kind": "queue", "function": "vault", "queue": "jobs"}]
    text = describe_text({**FUNCTION, "triggers": [_with_url(t, "http://127.0.0.1:8080") for t in triggers]})
    assert "API_KEY=****" in text
    assert "http://127.0.0.1:8080/v" in text
    assert "rate(5 minutes)" in text and "schedule-0a1b2c3d4e" in text
    assert "jobs" in text and "queue-0a1b2c3d4e" in text
