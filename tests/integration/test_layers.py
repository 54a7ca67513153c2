"""Layers through a real appliance: publish (CLI and API), versions, use from Python and Node.js under
/opt (sandboxed and plain instances), order, limits and deletion refused while used."""

import io
import os
import subprocess
import sys
import zipfile

import pytest

from appliance.client import ApiError
from tests.integration.conftest import REPO, start_appliance, stop_appliance


def zipped(files: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for path, text in files.items():
            zf.writestr(path, text)
    return buf.getvalue()


PY_FN = ("import os, greeting, shared\ndef handler(event, context):\n"
         "    return {'greeting': greeting.HELLO, 'shared': shared.WHO, 'file': greeting.__file__,"
         " 'opt': sorted(os.listdir('/opt')) if os.path.isdir('/opt') else None}\n")
NODE_FN = ("const greeting = require('greeting');\n"
           "exports.handler = async () => ({ greeting: greeting.HELLO });\n")


@pytest.fixture(scope="module", params=["auto", "off"])
def lay(request, tmp_path_factory):
    r = start_appliance(tmp_path_factory.mktemp("layers"), {"APPLIANCE_SANDBOX": request.param})
    r.sandbox = request.param
    yield r
    stop_appliance(r)


def publish(r, name, files):
    return r.http.post(f"{r.api_url}/v1/layers/{name}", data=zipped(files),
                         headers={"Content-Type": "application/zip"}, timeout=30)


def test_python_and_node_functions_use_layers_in_order(lay):
    a1 = publish(lay, "base", {"python/greeting.py": "HELLO = 'from base 1'\n", "python/shared.py": "WHO = 'base'\n",
                               "nodejs/node_modules/greeting/index.js": "exports.HELLO = 'node layer';\n"}).json()
    a2 = publish(lay, "base", {"python/greeting.py": "HELLO = 'from base 2'\n", "python/shared.py": "WHO = 'base'\n"}).json()
    over = publish(lay, "override", {"python/shared.py": "WHO = 'override'\n"}).json()
    assert (a1["ref"], a2["ref"], over["ref"]) == ("base:1", "base:2", "override:1")
    assert a1["digest"] != a2["digest"]

    fn = f"uses-layers-{lay.sandbox}"
    lay.api.create_function(name=fn, layers=["base:1", "override:1"])
    lay.api.upload_code(fn, zipped({"index.py": PY_FN}))
    got = lay.api.invoke(fn, {})
    got = got.get("result", got)
    assert got["greeting"] == "from base 1" and got["shared"] == "override"  # the later layer wins
    if lay.sandbox == "auto" and os.geteuid() == 0:
        assert got["file"] == "/opt/python/greeting.py" and got["opt"] == ["nodejs", "python"]

    node = f"node-layers-{lay.sandbox}"
    lay.api.create_function(name=node, runtime="nodejs20", layers=["base:1"])
    lay.api.upload_code(node, zipped({"index.js": NODE_FN}))
    got = lay.api.invoke(node, {})
    assert got.get("result", got) == {"greeting": "node layer"}

    # A new version of the function's layer list takes effect for new instances: version 2.
    lay.api.update_function(fn, layers=["base:2"])
    lay.api.upload_code(fn, zipped({"index.py": PY_FN.replace("shared.WHO", "'-'")}))
    got = lay.api.invoke(fn, {})
    assert got.get("result", got)["greeting"] == "from base 2"


def test_layer_lists_are_checked(lay):
    publish(lay, "checked", {"python/x.py": "X = 1\n"})
    for layers, fragment in ((["nope:1"], "nope:1 does not exist"), (["checked:9"], "checked:9 does not exist"),
                             (["checked"], "NAME:VERSION"), ([f"l{i}:1" for i in range(6)], "at most 5"),
                             (["checked:1", "checked:1"], "twice")):
        with pytest.raises(ApiError) as err:
            lay.api.create_function(name="bad-layers", layers=layers)
        assert err.value.status == 400 and fragment in str(err.value), (layers, str(err.value))


def test_a_used_version_cannot_be_deleted(lay):
    v = publish(lay, "keep", {"python/k.py": "K = 1\n"}).json()
    fn = f"keeps-{lay.sandbox}"
    lay.api.create_function(name=fn, layers=[v["ref"]])
    with pytest.raises(ApiError) as err:
        lay.api.delete_layer("keep", 1)
    assert err.value.status == 409 and fn in str(err.value)
    lay.api.update_function(fn, layers=[])
    assert lay.api.delete_layer("keep", 1)["deleted"]["ref"] == "keep:1"
    assert not [x for x in lay.api.list_layers() if x["name"] == "keep"]


def test_not_a_zip_is_refused(lay):
    resp = lay.http.post(f"{lay.api_url}/v1/layers/junk", data=b"hello", timeout=30,
                         headers={"Content-Type": "application/zip"})
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "Request.Invalid"


def test_cli_publish_ls_and_deploy_with_a_layer(lay, tmp_path):
    src = tmp_path / "clilayer" / "python"
    src.mkdir(parents=True)
    (src / "greeting.py").write_text("HELLO = 'cli layer'\n")
    (src / "shared.py").write_text("WHO = 'cli'\n")
    env = {**os.environ, "FAAS_API": lay.api_url, "FAAS_TOKEN": lay.token}

    def run(*args):
        return subprocess.run([sys.executable, "-m", "appliance.cli", *args], env=env, cwd=str(REPO),
                              capture_output=True, text=True, timeout=60, check=False)
    out = run("layer", "publish", "clilayer", str(tmp_path / "clilayer"))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "clilayer:1"
    fn_dir = tmp_path / "fn"
    fn_dir.mkdir()
    (fn_dir / "index.py").write_text(PY_FN)
    out = run("deploy", str(fn_dir), "--name", "cli-layered", "--layer", "clilayer:1")
    assert out.returncode == 0, out.stderr
    got = lay.api.invoke("cli-layered", {})
    assert got.get("result", got)["greeting"] == "cli layer"
    listed = run("layer", "ls")
    assert any(line.startswith("clilayer:1") and line.endswith("cli-layered") for line in listed.stdout.splitlines())
