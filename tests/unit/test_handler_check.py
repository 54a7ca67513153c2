"""The upload-time check of a package's handler: its module is there, compiles, and binds the name."""

import io
import zipfile

import pytest

from appliance.core.errors import CodeSyntaxError, HandlerNotFound
from appliance.core.handler_check import check_package


def pkg(files: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, src in files.items():
            zf.writestr(name, src)
    return buf.getvalue()


OK = "def handler(event, context):\n    return 1\n"


@pytest.mark.parametrize("source", [
    OK,
    "async def handler(event, context):\n    return 1\n",
    "handler = lambda event, context: 1\n",
    "from helpers import run as handler\n",
    "from helpers import *\n",
    "try:\n    import fast\nexcept ImportError:\n    fast = None\nelse:\n    pass\nif True:\n    def handler(e, c):\n"
    "        return 1\n",
    "class handler:\n    pass\n",
    "def __getattr__(name):\n    return lambda e, c: 1\n",
    "globals()['handler'] = lambda e, c: 1\n",
    "handler: object = None\n",
])
def test_handlers_that_may_load_pass(source):
    assert check_package(pkg({"index.py": source}), "index.handler", "python3.11") == []


def test_a_syntax_error_names_the_file_and_line():
    with pytest.raises(CodeSyntaxError) as e:
        check_package(pkg({"index.py": "import os\n\ndef handler(event, context)\n    return 1\n"}), "index.handler",
                      "python3.11")
    assert e.value.code == "Code.SyntaxError" and e.value.status == 400
    assert e.value.message.startswith("index.py, line 3: ")
    assert e.value.detail == {"file": "index.py", "line": 3}


def test_what_only_the_compiler_sees_is_a_syntax_error_too():
    with pytest.raises(CodeSyntaxError, match="line 1: 'return' outside function"):
        check_package(pkg({"index.py": "return 1\n"}), "index.handler", "python3.11")


def test_a_missing_function_names_the_file():
    with pytest.raises(HandlerNotFound) as e:
        check_package(pkg({"index.py": "def other(event, context):\n    return 1\n"}), "index.handler", "python3.11")
    assert e.value.code == "Code.HandlerNotFound" and "index.py defines no 'handler'" in e.value.message
    assert e.value.detail == {"file": "index.py"} and e.value.field == "handler"


def test_a_missing_module_is_refused_for_every_runtime():
    with pytest.raises(HandlerNotFound, match=r"needs index.py or index/__init__.py .* which has main.py"):
        check_package(pkg({"main.py": OK}), "index.handler", "python3.11")
    with pytest.raises(HandlerNotFound, match=r"index.js or index.mjs or index.cjs"):
        check_package(pkg({"index.py": OK}), "index.handler", "nodejs20")
    assert check_package(pkg({"index.mjs": "export const handler = async () => 1;\n"}), "index.handler",
                         "nodejs20") == []


def test_packages_and_nested_modules():
    assert check_package(pkg({"app/__init__.py": OK}), "app.handler", "python3.11") == []
    assert check_package(pkg({"src/app.py": OK}), "src/app.handler", "python3.11") == []


def test_another_file_that_does_not_compile_is_a_warning():
    warnings = check_package(pkg({"index.py": OK, "vendor/old.py": "print 'hi'\n"}), "index.handler", "python3.11")
    assert len(warnings) == 1 and warnings[0].startswith("vendor/old.py, line 1: ")
