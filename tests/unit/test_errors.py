import pytest

from appliance.core import errors


@pytest.mark.parametrize("exc, status, code", [
    (errors.ValidationError("x", field="f"), 400, "Request.Invalid"),
    (errors.UnsafeCode("x"), 400, "Code.Unsafe"),
    (errors.PayloadTooLarge("x"), 413, "Request.TooLarge"),
    (errors.FunctionNotFound("x"), 404, "Function.NotFound"),
    (errors.Conflict("x"), 409, "Resource.Conflict"),
    (errors.QueueFull("x"), 429, "Activation.QueueFull"),
    (errors.ColdStartTimeout("x"), 503, "Activation.Timeout"),
    (errors.PlacementFailed("x"), 503, "Instance.PlacementFailed"),
    (errors.InstanceCrashed("x"), 502, "Instance.Crashed"),
    (errors.function_error({"errorType": "Function.Error", "errorMessage": "boom"}), 502, "Function.Error"),
    (errors.function_error({"errorType": "Function.Timeout"}), 504, "Function.Timeout"),
    (errors.function_error({"errorType": "Runtime.ImportModuleError"}), 502, "Runtime.ImportModuleError"),
    (RuntimeError("secret detail"), 500, "Internal.Error"),
])
def test_errors_map_to_one_status_each(exc, status, code):
    got_status, headers, body = errors.to_response_body(exc, "rid")
    assert got_status == status
    assert body["error"]["code"] == code
    assert body["error"]["requestId"] == "rid"
    assert "secret detail" not in str(body)
    if status in (429, 503):
        assert int(headers["Retry-After"]) >= 1


def test_validation_errors_name_the_field():
    _, _, body = errors.to_response_body(errors.ValidationError("memory_mb must be ...", field="memory_mb"))
    assert body == {"error": {"code": "Request.Invalid", "message": "memory_mb must be ...", "field": "memory_mb"}}


def test_function_errors_carry_the_runtime_error():
    err = {"errorType": "Function.Error", "errorMessage": "ValueError: bad", "stackTrace": ["x"], "requestId": "r"}
    _, _, body = errors.to_response_body(errors.function_error(err))
    assert body["error"]["function"] == err
