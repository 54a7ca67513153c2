"""The package layout the README describes: which rooms may import which, and no cycles.

Imports flow from the faces (edge, control, cli, server) through ``wiring`` to the core and its
ports; backends implement the ports; the core imports no face and no backend; the runtimes
import nothing of the appliance. Every import counts, including those inside functions.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PKG = REPO / "appliance"

#: room -> the rooms it may import (besides itself).
ALLOWED = {
    "core": set(),
    "instances": {"core"},
    "backends": {"core", "instances"},
    "cluster": {"core", "config"},
    "web": {"core"},
    "edge": {"core", "web", "wiring"},
    "control": {"core", "web", "wiring"},
    "config": {"core"},
    "wiring": {"core", "instances", "backends", "cluster", "config"},
    "client": {"core"},
    "server": {"config", "edge", "control", "wiring", "core"},
    "cli": {"client", "config", "core", "server", "instances", "cluster", "wiring"},
    "__main__": {"cli"},
    "__init__": set(),
}


def module_name(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    """Every ``appliance`` module this file imports, wherever the import statement is."""
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.split(".")[0] == "appliance")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "appliance":
                continue
            for a in node.names:  # "from appliance.core import codepkg" imports a module
                candidate = f"{target}.{a.name}"
                out.add(candidate if (REPO / (candidate.replace(".", "/") + ".py")).exists() else target)
    return out


def room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports_of(p) for p in PKG.rglob("*.py")}


def test_every_room_imports_only_what_it_may():
    wrong = []
    for mod, deps in graph().items():
        r = room(mod)
        assert r in ALLOWED, f"{mod}: a room the layout does not know; add it to the README and ALLOWED"
        for d in deps:
            if room(d) != r and room(d) not in ALLOWED[r] and d != "appliance":
                wrong.append(f"{mod} -> {d}")
    assert wrong == []


def test_the_core_imports_no_face_and_no_backend():
    g = graph()
    core = {m: d for m, d in g.items() if room(m) == "core"}
    assert core, "the core package is missing"
    assert all(room(d) == "core" for deps in core.values() for d in deps)


def test_no_import_cycles():
    g = graph()
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for d in sorted(g.get(m, ())):
            if d not in g:
                continue
            if state.get(d) == 1:
                cycles.append(stack[stack.index(d):] + [d])
            elif d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(g):
        if m not in state:
            visit(m)
    assert cycles == []


def test_rooms_form_no_circle():
    """Not only modules: no room may reach back to a room that imports it (faces above wiring,
    wiring above the rooms it assembles, the core at the bottom)."""
    rooms: dict[str, set[str]] = {}
    for mod, deps in graph().items():
        rooms.setdefault(room(mod), set()).update(room(d) for d in deps if room(d) != room(mod))

    def reaches(a, b, seen=()):
        return any(n == b or (n not in seen and reaches(n, b, seen + (n,))) for n in rooms.get(a, ()))

    assert [r for r in rooms if reaches(r, r)] == []


def test_the_runtimes_import_nothing_of_the_appliance():
    for path in (REPO / "runtimes").rglob("*.py"):
        text = path.read_text()
        tree = ast.parse(text)
        names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        names += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        assert not [n for n in names if n.split(".")[0] == "appliance"], path


def test_the_checker_sees_a_wrong_import(tmp_path):
    """The rules above can fail: a core module importing a backend is caught."""
    fake = PKG / "core" / "_layout_probe.py"
    fake.write_text("from appliance.backends.sqlite_meta import SqliteMetadataStore\n")
    try:
        deps = imports_of(fake)
        assert "appliance.backends.sqlite_meta" in deps
        assert room("appliance.backends.sqlite_meta") not in ALLOWED["core"]
    finally:
        fake.unlink()
