"""Code upload in every form, versions, and unsafe packages refused."""

import io
import os
import stat
import zipfile

import pytest

from .conftest import make_zip

V1 = "def handler(event, context):\n    return 'v1'\n"
V2 = "def handler(event, context):\n    return 'v2'\n"


def put_code(r, name, **kw):
    return r.http.put(f"{r.api_url}/v1/functions/{name}/code", timeout=30, **kw)


@pytest.fixture
def fn(appliance):
    import uuid
    name = f"up-{uuid.uuid4().hex[:6]}"
    appliance.api.create_function(name=name)
    return name


def test_raw_zip_upload_makes_version_one_and_invokes(appliance, fn):
    resp = put_code(appliance, fn, data=make_zip({"index.py": V1}), headers={"Content-Type": "application/zip"})
    assert resp.status_code == 201, resp.text
    assert resp.json()["version"]["version"] == 1
    assert appliance.api.invoke(fn) == "v1"


def test_a_new_upload_is_a_new_version_and_takes_the_traffic(appliance, fn):
    put_code(appliance, fn, data=make_zip({"index.py": V1}), headers={"Content-Type": "application/zip"})
    assert appliance.api.invoke(fn) == "v1"
    resp = put_code(appliance, fn, data=make_zip({"index.py": V2}), headers={"Content-Type": "application/zip"})
    assert resp.json()["version"]["version"] == 2
    assert appliance.api.invoke(fn) == "v2"
    versions = appliance.http.get(f"{appliance.api_url}/v1/functions/{fn}/versions", timeout=5).json()["versions"]
    assert [v["version"] for v in versions] == [1, 2]
    old = appliance.http.get(f"{appliance.api_url}/v1/functions/{fn}/code", params={"version": 1}, timeout=5)
    assert zipfile.ZipFile(io.BytesIO(old.content)).read("index.py").decode() == V1


def test_multipart_upload(appliance, fn):
    resp = put_code(appliance, fn, files={"code": ("code.zip", make_zip({"index.py": V1}), "application/zip")})
    assert resp.status_code == 201, resp.text
    assert appliance.api.invoke(fn) == "v1"


def test_multipart_upload_of_a_single_source_file(appliance, fn):
    resp = put_code(appliance, fn, files={"code": ("index.py", V2.encode(), "text/x-python")})
    assert resp.status_code == 201, resp.text
    assert appliance.api.invoke(fn) == "v2"


def test_single_source_file_upload(appliance, fn):
    resp = put_code(appliance, fn, data=V2.encode(), params={"filename": "index.py"},
                    headers={"Content-Type": "text/x-python"})
    assert resp.status_code == 201, resp.text
    assert appliance.api.invoke(fn) == "v2"


def test_online_editor_json_upload(appliance, fn):
    resp = put_code(appliance, fn, json={"files": {"index.py": V1}})
    assert resp.status_code == 201, resp.text
    assert appliance.api.invoke(fn) == "v1"


def _zip_with(name, data=b"x", mode=stat.S_IFREG | 0o644):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        info = zipfile.ZipInfo(name)
        info.external_attr = mode << 16
        info.compress_type = zipfile.ZIP_DEFLATED
        zf.writestr(info, data)
    return buf.getvalue()


@pytest.mark.parametrize("data, fragment", [
    (_zip_with("../../etc/cron.d/x"), "climbs out"),
    (_zip_with("/abs.py"), "absolute"),
    (_zip_with("link.py", b"/etc/shadow", stat.S_IFLNK | 0o777), "symbolic link"),
    (_zip_with("index.py", b"\0" * (300 << 20)), "bomb|unpacked size"),
    (b"this is not a zip at all", "not a readable zip"),
])
def test_unsafe_packages_are_refused_and_nothing_is_stored(appliance, fn, data, fragment):
    import re
    resp = put_code(appliance, fn, data=data, headers={"Content-Type": "application/zip"})
    assert resp.status_code == 400, resp.text
    err = resp.json()["error"]
    assert err["code"] == "Code.Unsafe" and err["field"] == "code"
    assert re.search(fragment, err["message"])
    assert appliance.api.get_function(fn)["version"] == 0


def test_oversize_uploads_are_refused(make_appliance):
    r = make_appliance({"APPLIANCE_MAX_CODE_BYTES": "2000"})
    r.api.create_function(name="big")
    big = make_zip({"index.py": V1, "blob.bin": os.urandom(4000)})
    resp = put_code(r, "big", data=big, headers={"Content-Type": "application/zip"})
    assert resp.status_code == 413
    assert resp.json()["error"]["code"] == "Request.TooLarge"


def test_too_many_files_are_refused(make_appliance):
    r = make_appliance({"APPLIANCE_MAX_FILES": "3"})
    r.api.create_function(name="many")
    resp = put_code(r, "many", data=make_zip({f"f{i}.py": "" for i in range(4)}),
                    headers={"Content-Type": "application/zip"})
    assert resp.status_code == 400 and "4 entries" in resp.json()["error"]["message"]


def test_deleting_a_function_removes_its_triggers_and_stops_its_instances(appliance):
    from .conftest import wait_for
    name = appliance.deploy(trigger=("GET", "/doomed"))
    assert appliance.get("/doomed").text == "Hello Serverless"
    assert len(appliance.instances(name)) == 1
    pid_before = appliance.instances(name)[0]["id"]
    assert appliance.http.delete(f"{appliance.api_url}/v1/functions/{name}", timeout=10).status_code == 200
    resp = appliance.get("/doomed")
    assert resp.status_code == 404 and resp.json()["error"]["code"] == "Trigger.NotFound"
    assert appliance.http.get(f"{appliance.api_url}/v1/triggers", params={"function": name}, timeout=5).json()["triggers"] == []
    wait_for(lambda: f"event=instance_exit instance={pid_before} " in appliance.log(), 10,
             message="the instance to exit")
