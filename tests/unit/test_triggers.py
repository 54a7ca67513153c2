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


def test_path_parameters_are_taken_from_the_decoded_path_as_they_are():
    """The engine decoded the path once (``a%2520b`` arrives as ``a%20b``): never decode again."""
    t = table(("GET", "/users/{id}/posts/{post}", "f"))
    assert t.match("GET", "/users/42/posts/a b").params == {"id": "42", "post": "a b"}
    assert t.match("GET", "/users/42/posts/a%25b").params == {"id": "42", "post": "a%25b"}
    assert t.match("GET", "/users/42/posts/a%2Fb").params == {"id": "42", "post": "a%2Fb"}


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


def test_a_known_path_with_another_method_is_405_with_allow():
    t = table(("GET", "/a", "f"), ("DELETE", "/a", "g"), ("PUT", "/{x}", "h"), ("POST", "/b", "i"))
    with pytest.raises(MethodNotAllowed) as err:
        t.match("PATCH", "/a")
    assert err.value.allow == ("DELETE", "GET", "HEAD", "PUT")


def test_default_route_catches_what_nothing_else_matches():
    t = table(("GET", "/a", "f"), ("ANY", "$default", "fallback"))
    assert t.match("GET", "/a").trigger.function == "f"
    for method, path in (("POST", "/a"), ("GET", "/other/deep/path"), ("DELETE", "/")):
        m = t.match(method, path)
        assert (m.trigger.function, m.params, m.route_key) == ("fallback", {}, "$default")


def test_default_route_takes_any_only():
    assert route_key("ANY", "$default") == "$default"
    with pytest.raises(ValidationError):
        route_key("GET", "$default")


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


def _scan(routes, method, path):
    """Reference matcher: every route, most specific first (the table's documented rule)."""
    parts = path.strip("/").split("/") if path.strip("/") else []
    ranked = []
    for t in routes:
        segs = parse_path(t.path)
        spec = (sum(k == "lit" for k, _ in segs), -int(bool(segs) and segs[-1][0] == "greedy"), len(segs))
        ranked.append((spec, segs, t))
    best, path_matched = None, False
    for spec, segs, t in ranked:
        params = {}
        ok = True
        for i, (kind, value) in enumerate(segs):
            if kind == "greedy":
                ok = i < len(parts)
                params[value] = "/".join(parts[i:])
                break
            if i >= len(parts) or (kind == "lit" and parts[i] != value) or (kind == "param" and not parts[i]):
                ok = False
                break
            if kind == "param":
                params[value] = parts[i]
        else:
            ok = ok and len(parts) == len(segs)
        if not ok:
            continue
        path_matched = True
        rank = 1 if t.method == method or (method == "HEAD" and t.method == "GET") else 0 if t.method == "ANY" else None
        if rank is not None and (best is None or (*spec, rank) > best[0]):
            best = ((*spec, rank), t, params)
    if best:
        return best[1].function, best[2], f"{best[1].method} {best[1].path}"
    return "MethodNotAllowed" if path_matched else "RouteNotFound"


def test_the_trie_matches_as_a_scan_of_every_route_does():
    routes = [
        Trigger("GET", "/users/me", "a"), Trigger("GET", "/users/{id}", "b"), Trigger("ANY", "/users/me", "c"),
        Trigger("POST", "/users/{id+}", "d"), Trigger("ANY", "/files/{path+}", "e"), Trigger("PUT", "/files/x", "f"),
        Trigger("ANY", "/", "g"), Trigger("DELETE", "/a/b/c", "h"), Trigger("GET", "/a/{x}/c", "i"),
        Trigger("GET", "/{a}/b/{c}", "j"), Trigger("PATCH", "/{a}/{b}/{c}", "k"), Trigger("GET", "/a/{x+}", "l"),
    ]
    t = RouteTable(routes)
    paths = ["/users/me", "/users/me/", "/users/7", "/users/a/b", "/files/x", "/files/y/z", "/", "/a/b/c",
             "/a/q/c", "/nope", "/users/m%65", "/q/b/r", "/a/b", "/a//c", "/x/y/z"]
    for method in ("GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"):
        for path in paths:
            try:
                m = t.match(method, path)
                got = (m.trigger.function, m.params, m.route_key)
            except Exception as exc:  # noqa: BLE001 - the error's type is the outcome
                got = type(exc).__name__
            assert got == _scan(routes, method, path), (method, path)


def test_matching_cost_does_not_grow_with_the_number_of_routes():
    """Structural: the trie nodes a match visits depend on the path, not on how many routes exist."""
    def routes(n):
        out = [Trigger("GET", f"/svc{i}/items/{{id}}", f"f{i}") for i in range(n)]
        return out + [Trigger("ANY", f"/api/v{i}/{{proxy+}}", f"g{i}") for i in range(n)]

    small, large = RouteTable(routes(10)), RouteTable(routes(2000))
    assert len(large) == 4000
    for path in ("/nothing/here/at/all", "/svc5/items/7", "/api/v3/a/b/c", "/svc5/items/7/extra", "/api/v9999/x"):
        assert large.visits(path) == small.visits(path) <= len(path.strip("/").split("/")) + 1, path
    assert large.match("GET", "/svc1999/items/x").trigger.function == "f1999"
    with pytest.raises(RouteNotFound):
        large.match("GET", "/nothing/here")


def test_paths_under_v1_are_a_function_s_like_any_other():
    t = table(("GET", "/v1/users/{id}", "f"))
    m = t.match("GET", "/v1/users/7")
    assert m.trigger.path == "/v1/users/{id}" and m.params == {"id": "7"}
