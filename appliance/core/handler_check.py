"""Is a code package's handler there, and does its module compile? Checked at upload.

Why at upload: a syntax error or a misspelt handler used to deploy with exit 0 and fail at the
first call, far from the edit that caused it. Refusing the upload with the file and line (400,
``Code.SyntaxError`` / ``Code.HandlerNotFound``) keeps the previous version serving and puts the
error where the user is looking.

What is checked, and what is not:

* every runtime: the handler's module file is in the package (``index.handler`` needs ``index.py``,
  or ``index.js`` / ``.mjs`` / ``.cjs`` for Node.js).
* Python: the module compiles (``compile()``, the same parser the runtime uses), and it binds the
  handler's name at module level: a ``def``, a class, an assignment or an import of that name,
  also inside ``if``/``try``/``with`` blocks. A module that could bind names in ways no parser can
  see (``from x import *``, assigning ``globals()``, a module ``__getattr__``) is given the benefit
  of the doubt. Other ``.py`` files that do not compile only give a warning: vendored libraries
  sometimes carry files that are never imported.
* Node.js: exports are set at run time, so only the file is checked.
"""

from __future__ import annotations

import ast
import io
import zipfile

from appliance.core.errors import CodeSyntaxError, HandlerNotFound

#: Python files bigger than this are not parsed at upload (the runtime still reports them).
MAX_PARSE_BYTES = 2 << 20
#: At most this many other .py files are compiled for warnings.
MAX_OTHER_FILES = 200


def module_candidates(handler: str, runtime: str) -> tuple[str, ...]:
    module = handler.rsplit(".", 1)[0]
    if runtime.startswith("python"):
        return f"{module}.py", f"{module}/__init__.py"
    return tuple(f"{module}{s}" for s in (".js", ".mjs", ".cjs"))


def check_package(data: bytes, handler: str, runtime: str) -> list[str]:
    """Raise :class:`HandlerNotFound` or :class:`CodeSyntaxError` for a package whose handler cannot
    load; return warnings for what may still work."""
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        infos = {i.filename: i for i in zf.infolist() if not i.is_dir()}
        module_file = next((c for c in module_candidates(handler, runtime) if c in infos), None)
        if module_file is None:
            wanted = " or ".join(module_candidates(handler, runtime))
            raise HandlerNotFound(f"handler {handler!r} needs {wanted} in the package, which has "
                                  f"{_some(infos)}; fix the handler setting or the package's layout",
                                  field="handler", detail={"file": wanted.split(" or ")[0]})
        if not runtime.startswith("python"):
            return []
        function = handler.rsplit(".", 1)[1]
        source = zf.read(infos[module_file]) if infos[module_file].file_size <= MAX_PARSE_BYTES else None
        if source is not None:
            tree = _compile(source, module_file)
            if not _binds(tree, function):
                raise HandlerNotFound(f"{module_file} defines no {function!r} at module level (handler "
                                      f"{handler!r}); define def {function}(event, context) or fix the handler "
                                      "setting", field="handler", detail={"file": module_file})
        warnings = []
        others = [n for n in infos if n.endswith(".py") and n != module_file][:MAX_OTHER_FILES]
        for name in others:
            info = infos[name]
            if info.file_size > MAX_PARSE_BYTES:
                continue
            try:
                _compile(zf.read(info), name)
            except CodeSyntaxError as exc:
                warnings.append(f"{exc.message} (not the handler's module; importing it will fail)")
        return warnings


def _compile(source: bytes, filename: str) -> ast.Module:
    try:
        tree = compile(source, filename, "exec", ast.PyCF_ONLY_AST, dont_inherit=True)
        compile(tree, filename, "exec", dont_inherit=True)  # what only the compiler checks (return outside def)
        return tree
    except SyntaxError as exc:
        line = exc.lineno or 0
        text = (exc.text or "").strip()
        raise CodeSyntaxError(f"{filename}, line {line}: {exc.msg}" + (f": {text[:120]}" if text else ""),
                              field="code", detail={"file": filename, "line": line}) from None
    except ValueError as exc:  # NUL bytes in the source
        raise CodeSyntaxError(f"{filename}: {exc}", field="code", detail={"file": filename, "line": 0}) from None


def _binds(tree: ast.Module, name: str) -> bool:
    """Does the module bind ``name`` at its top level (or might it, in ways a parser cannot see)?"""
    stack = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            if node.name == name or node.name == "__getattr__":
                return True
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                if alias.name == "*" or (alias.asname or alias.name.split(".")[0]) == name:
                    return True
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign, ast.Expr)):
            if "globals()" in ast.unparse(node):
                return True  # globals()[...] = ..., globals().update(...)
            targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
            for t in filter(None, targets):
                for sub in ast.walk(t):
                    if isinstance(sub, ast.Name) and sub.id == name:
                        return True
        elif isinstance(node, (ast.If, ast.Try, ast.With, ast.For, ast.While)) or \
                type(node).__name__ == "TryStar":
            for field in ("body", "orelse", "finalbody", "handlers"):
                for child in getattr(node, field, []) or []:
                    stack.extend(child.body if isinstance(child, ast.ExceptHandler) else [child])
        elif isinstance(node, ast.Match):
            for case in node.cases:
                stack.extend(case.body)
    return False


def _some(infos: dict) -> str:
    names = sorted(infos)
    if not names:
        return "no files"
    return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
