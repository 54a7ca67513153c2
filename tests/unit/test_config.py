import pytest

from appliance.config import Settings
from appliance.core.errors import ValidationError


def test_defaults_are_valid_and_documented_values():
    s = Settings.from_env({})
    assert (s.mode, s.host, s.edge_port, s.api_port, s.queue_timeout_s, s.max_queue) == (
        "local", "127.0.0.1", 8080, 8081, 10.0, 100)


def test_environment_overrides_and_settings_file(tmp_path):
    f = tmp_path / "settings.env"
    f.write_text("# comment\nAPPLIANCE_EDGE_PORT=9000\nexport APPLIANCE_MAX_QUEUE='5'\n")
    s = Settings.from_env({"APPLIANCE_SETTINGS": str(f), "APPLIANCE_EDGE_PORT": "9100"})
    assert (s.edge_port, s.max_queue) == (9100, 5)


@pytest.mark.parametrize("env, field", [
    ({"APPLIANCE_MODE": "mesh"}, "mode"),
    ({"APPLIANCE_EDGE_PORT": "70000"}, "edge_port"),
    ({"APPLIANCE_EDGE_PORT": "eighty"}, "edge_port"),
    ({"APPLIANCE_QUEUE_TIMEOUT_S": "0"}, "queue_timeout_s"),
    ({"APPLIANCE_MAX_QUEUE": "0"}, "max_queue"),
    ({"APPLIANCE_SANDBOX": "maybe"}, "sandbox"),
    ({"APPLIANCE_PANIC_WINDOW_S": "90"}, "panic_window_s"),
    ({"APPLIANCE_TARGET_UTILISATION": "1.5"}, "target_utilisation"),
    ({"APPLIANCE_MAX_SCALE_UP_RATE": "1"}, "max_scale_up_rate"),
])
def test_bad_values_name_the_variable(env, field):
    with pytest.raises(ValidationError) as err:
        Settings.from_env(env)
    assert err.value.field == field
    assert f"APPLIANCE_{field.upper()}" in err.value.message


def test_a_missing_settings_file_is_a_clear_error(tmp_path):
    with pytest.raises(ValidationError, match="cannot be read"):
        Settings.from_env({"APPLIANCE_SETTINGS": str(tmp_path / "nope.env")})
