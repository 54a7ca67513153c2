import pytest

from appliance.core.errors import MethodNotAllowed, RouteNotFound, ValidationError
from appliance.core.model import Trigger
from appliance.core.triggers import RouteTable, parse_path, route_key


def table(*routes):
    return RouteTable([Trigger(m, p, f) for m, p, f in routes])


def test_literal_route_matches_exactly():
    t = table(("GET", "/hello/serverless", "hello"))
    m = t.match("GET", "/hello/serverless")
    assert (m.trigger.function, m.params, m.route_key) == ("hello", {}, "GET /hello/serverless")
    with pytest.raises(RouteNotFound):
        t.match("GET", "/hello/serverless/extra")


def test_trailing_slash_is_the_same_route():
    assert table(("GET", "/a", "f")).match("GET", "/a/").trigger.function == "f"


def test_path_parameters_are_extracted_and_decoded():
    m = table(("GET", "/users/{id}/posts/{post}", "f")).match("GET", "/users/42/posts/a%20b")
    assert m.params == {"id": "42", "post": "a b"}


def test_greedy_parameter_takes_the_rest_of_the_path():
    t = table(("ANY", "/files/{proxy+}", "files"))
    assert t.match("PUT", "/files/a/b/c.txt").params == {"proxy": "a/b/c.txt"}
    with pytest.raises(RouteNotFound):
        t.match("GET", "/files")


def test_the_most_specific_route_wins():
    t = table(("GET", "/users/{id}", "by-id"), ("GET", "/users/me", "me"), ("ANY", "/{proxy+}", "catch-all"),
              ("ANY", "/users/{id}", "any-id"))
    assert t.match("GET", "/users/me").trigger.function == "me"
    assert t.match("GET", "/users/7").trigger.function == "by-id"
    assert t.match("POST", "/users/7").trigger.function == "any-id"
    assert t.match("GET", "/other/x").trigger.function == "catch-all"


def test_a_known_path_with_another_method_is_405():
    with pytest.raises(MethodNotAllowed):
        table(("GET", "/a", "f")).match("POST", "/a")


def test_head_is_served_by_get():
    assert table(("GET", "/a", "f")).match("HEAD", "/a").trigger.function == "f"


def test_routes_with_the_same_shape_conflict():
    assert route_key("GET", "/users/{id}") == route_key("get", "/users/{uid}")
    assert route_key("GET", "/users/{id}") != route_key("POST", "/users/{id}")
    assert route_key("GET", "/f/{p+}") != route_key("GET", "/f/{p}")


@pytest.mark.parametrize("path, fragment", [
    ("hello", "start with '/'"),
    ("/_/health", "the edge router's own"),
    ("/_", "the edge router's own"),
    ("/a/{p+}/b", "last segment"),
    ("/a/{x}/{x}", "twice"),
    ("/a b", "not a literal"),
    ("/a/{bad-name}", "not a literal"),
])
def test_invalid_paths_are_refused_with_the_reason(path, fragment):
    with pytest.raises(ValidationError) as err:
        parse_path(path)
    assert fragment in err.value.message and err.value.field == "path"


def test_unknown_methods_are_refused():
    with pytest.raises(ValidationError) as err:
        route_key("FETCH", "/a")
    assert err.value.field == "method"


def test_the_literal_route_shortcut_matches_as_the_full_scan_does():
    """Literal-only routes are looked up directly; every answer must equal the scan's."""
    table = RouteTable([
        Trigger("GET", "/users/me", "a"), Trigger("GET", "/users/{id}", "b"), Trigger("ANY", "/users/me", "c"),
        Trigger("POST", "/users/{id+}", "d"), Trigger("ANY", "/files/{path+}", "e"), Trigger("PUT", "/files/x", "f"),
        Trigger("ANY", "/", "g"), Trigger("DELETE", "/a/b/c", "h"), Trigger("GET", "/a/{x}/c", "i"),
    ])
    scan = RouteTable([])
    scan._routes = table._routes  # the same routes with no shortcut
    paths = ["/users/me", "/users/me/", "/users/7", "/users/a/b", "/files/x", "/files/y/z", "/", "/a/b/c",
             "/a/q/c", "/nope", "/users/m%65"]
    for method in ("GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"):
        for path in paths:
            outcomes = []
            for t in (table, scan):
                try:
                    m = t.match(method, path)
                    outcomes.append((m.trigger.function, m.params, m.route_key))
                except Exception as exc:  # noqa: BLE001 - the error's type is the outcome
                    outcomes.append(type(exc).__name__)
            assert outcomes[0] == outcomes[1], (method, path, outcomes)


def test_paths_under_v1_are_a_function_s_like_any_other():
    t = table(("GET", "/v1/users/{id}", "f"))
    m = t.match("GET", "/v1/users/7")
    assert m.trigger.path == "/v1/users/{id}" and m.params == {"id": "7"}
