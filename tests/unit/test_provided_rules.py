"""The rules that make a ``provided`` function: its settings, its package's executable bit, its pool."""

import io
import os
import stat
import zipfile

import pytest

from appliance.backends.nomad_scheduler import pool_service
from appliance.core import codepkg
from appliance.core.errors import ValidationError
from appliance.core.model import FunctionConfig


def config(**kw):
    return FunctionConfig.from_request({"name": "rt", **kw})


@pytest.mark.parametrize("runtime", ["provided", "provided.al2023"])
def test_provided_runtimes_take_any_short_handler(runtime):
    for handler in ("bootstrap", "function.handler", "bin/serve", "com.example::Handler", "x$y"):
        assert config(runtime=runtime, handler=handler).handler == handler


@pytest.mark.parametrize("handler", ["", "../bootstrap", "a b", "x" * 129, "/abs"])
def test_provided_handlers_are_still_bounded(handler):
    with pytest.raises(ValidationError) as e:
        config(runtime="provided", handler=handler)
    assert e.value.field == "handler"


def test_provided_concurrency_is_one():
    assert config(runtime="provided").concurrency == 1
    with pytest.raises(ValidationError) as e:
        config(runtime="provided", concurrency=2)
    assert e.value.field == "concurrency" and "max_instances" in e.value.message


def test_python_handlers_keep_their_rule():
    with pytest.raises(ValidationError):
        config(runtime="python3.11", handler="bootstrap")


def test_a_package_needs_a_bootstrap_or_the_named_executable():
    assert codepkg.handler_file_present(("bootstrap",), "function.handler", "provided")
    assert codepkg.handler_file_present(("bin/serve",), "bin/serve", "provided.al2023")
    assert not codepkg.handler_file_present(("index.py",), "index.handler", "provided")


def test_executable_bits_survive_zip_and_unpack_and_a_top_level_bootstrap_is_always_executable(tmp_path):
    src = tmp_path / "src"
    (src / "bin").mkdir(parents=True)
    (src / "bin" / "tool").write_text("#!/bin/sh\n")
    (src / "bin" / "tool").chmod(0o755)
    (src / "data.txt").write_text("x")
    data = codepkg.zip_directory(src)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:           # a zip without file modes, as online editing makes
        zf.writestr("bootstrap", "#!/bin/sh\n")
        zf.writestr("lib/bootstrap", "not the entry point")
    out = codepkg.unpack(data, tmp_path / "a", codepkg.Limits())
    assert os.stat(out / "bin" / "tool").st_mode & 0o777 == 0o555
    assert os.stat(out / "data.txt").st_mode & 0o777 == 0o444
    out = codepkg.unpack(buf.getvalue(), tmp_path / "b", codepkg.Limits())
    assert stat.S_IMODE(os.stat(out / "bootstrap").st_mode) == 0o555
    assert stat.S_IMODE(os.stat(out / "lib" / "bootstrap").st_mode) == 0o444


def test_both_provided_ids_share_one_pool():
    assert pool_service("provided") == pool_service("provided.al2023") == "faas-pool-provided"
    assert pool_service("python3.11") == "faas-pool-python3-11"
