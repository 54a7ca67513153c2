"""Deploying a new version warms it up before it takes traffic."""


from .conftest import make_zip, wait_for


def invoke(r, name):
    return r.http.post(f"{r.api_url}/v1/functions/{name}/invocations", json={}, timeout=30)


def test_a_new_version_with_min_instances_is_ready_when_the_upload_returns(appliance):
    name = appliance.deploy({"index.py": "def handler(e, c):\n    return 'v1'\n"}, min_instances=1)
    wait_for(lambda: [i for i in appliance.instances(name) if i["version"] == 1], 20, message="the v1 instance")
    appliance.api.upload_code(name, make_zip({"index.py": "def handler(e, c):\n    return 'v2'\n"}))
    # The upload returned only once version 2 had its instance: the first request is warm.
    assert [i for i in appliance.instances(name) if i["version"] == 2]
    resp = invoke(appliance, name)
    assert resp.json() == "v2" and resp.headers["X-Faas-Cold-Start"] == "0"
    wait_for(lambda: {i["version"] for i in appliance.instances(name)} == {2}, 20, message="v1 to be drained")


def test_a_new_version_without_min_instances_is_unpacked_and_compiled_before_it_is_published(appliance):
    name = appliance.deploy()
    digest = appliance.http.get(f"{appliance.api_url}/v1/functions/{name}", timeout=5).json()["code_sha256"]
    assert (appliance.data_dir / "code" / digest / "__pycache__" / "index.cpython-311.pyc").exists()
