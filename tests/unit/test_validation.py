import pytest

from appliance.core.errors import ValidationError
from appliance.core.model import FunctionConfig


def test_defaults_match_the_documented_ones():
    c = FunctionConfig.from_request({"name": "hello"})
    assert (c.runtime, c.handler, c.memory_mb, c.timeout_s, c.concurrency, c.min_instances, c.keep_alive_s) == (
        "python3.11", "index.handler", 128, 3, 1, 0, 90)


@pytest.mark.parametrize("body, field, fragment", [
    ({"name": "Hello"}, "name", "lowercase"),
    ({"name": ""}, "name", "1-60"),
    ({"name": "trailing-"}, "name", "not ending"),
    ({"name": "a" * 61}, "name", "1-60"),
    ({}, "name", "name must be"),
    ({"name": "f", "runtime": "ruby"}, "runtime", "python3.11"),
    ({"name": "f", "handler": "index"}, "handler", "module.function"),
    ({"name": "f", "handler": "../x.handler"}, "handler", "module.function"),
    ({"name": "f", "memory_mb": 64}, "memory_mb", "128 to 10240"),
    ({"name": "f", "memory_mb": "128"}, "memory_mb", "integer"),
    ({"name": "f", "memory_mb": True}, "memory_mb", "integer"),
    ({"name": "f", "timeout_s": 0}, "timeout_s", "1 to 900"),
    ({"name": "f", "timeout_s": 901}, "timeout_s", "1 to 900"),
    ({"name": "f", "concurrency": 0}, "concurrency", "1 to 1000"),
    ({"name": "f", "max_instances": 0}, "max_instances", "1 to 1000"),
    ({"name": "f", "min_instances": 3, "max_instances": 2}, "min_instances", "cannot exceed"),
    ({"name": "f", "keep_alive_s": -1}, "keep_alive_s", "0 to 86400"),
    ({"name": "f", "environment": []}, "environment", "object"),
    ({"name": "f", "environment": {"1X": "y"}}, "environment", "invalid"),
    ({"name": "f", "environment": {"FAAS_X": "y"}}, "environment", "reserved"),
    ({"name": "f", "environment": {"X": 1}}, "environment", "string"),
    ({"name": "f", "environment": {"X": "y" * 5000}}, "environment", "limit"),
    ({"name": "f", "environment": {"X": "a\x00b"}}, "environment", "NUL"),
    ({"name": "f", "description": "d" * 300}, "description", "256"),
    ({"name": "f", "description": 0}, "description", "string"),
    ({"name": "f", "description": False}, "description", "string"),
    ({"name": "f", "network": "host"}, "network", "default, none"),
    ({"name": "f", "network": 0}, "network", "default, none"),
    ({"name": "f", "colour": "red"}, "colour", "unknown field"),
])
def test_each_invalid_field_is_named_with_a_fix(body, field, fragment):
    with pytest.raises(ValidationError) as err:
        FunctionConfig.from_request(body)
    assert err.value.field == field
    assert fragment in err.value.message
    assert err.value.status == 400


def test_null_takes_the_default():
    c = FunctionConfig.from_request({"name": "f", "description": None, "network": None, "environment": None})
    assert (c.description, c.network, c.environment) == ("", "default", {})


def test_updates_keep_fields_left_out_and_refuse_renames():
    base = FunctionConfig.from_request({"name": "f", "memory_mb": 256})
    c = FunctionConfig.from_request({"timeout_s": 10}, base=base, name="f")
    assert (c.memory_mb, c.timeout_s) == (256, 10)
    with pytest.raises(ValidationError) as err:
        FunctionConfig.from_request({"name": "g"}, base=base, name="f")
    assert err.value.field == "name"


def test_a_body_that_is_not_an_object_is_refused():
    with pytest.raises(ValidationError) as err:
        FunctionConfig.from_request(["f"])
    assert err.value.field == "body"
