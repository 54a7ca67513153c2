"""What an instance's sandbox profile lets it see (the profile is pure data; applying it is integration-tested)."""

from appliance import sandbox


def _profile(tmp_path, **kw):
    return sandbox.profile(root=str(tmp_path / "root"), code_dir=str(tmp_path / "code"),
                           runtime_dir=str(tmp_path / "rt"), socket_dir=str(tmp_path / "sock"), uid=420123,
                           network=False, **kw)


def test_the_code_and_runtime_are_read_only_and_only_the_socket_dir_is_writable(tmp_path):
    p = _profile(tmp_path)
    assert (str(tmp_path / "code"), sandbox.TASK_DIR) in p["ro"]
    assert (str(tmp_path / "rt"), sandbox.RUNTIME_DIR) in p["ro"]
    assert p["rw"] == [(str(tmp_path / "sock"), sandbox.SOCKET_DIR)]
    assert p["cwd"] == sandbox.TASK_DIR and p["uid"] == 420123 and p["network"] is False


def test_only_the_listed_parts_of_etc_are_visible_and_no_secrets(tmp_path):
    p = _profile(tmp_path)
    visible = {dst for _, dst in p["ro"]} | {dst for _, dst in p["links"]} | set(p["files"])
    etc = {d for d in visible if d.startswith("/etc/")}
    assert etc <= {"/etc/" + part for part in sandbox.ETC_PARTS} | {"/etc/passwd", "/etc/group", "/etc/hostname"}
    assert not {"/etc/shadow", "/etc/gshadow", "/etc/ssl/private", "/root", "/home", "/var", "/proc"} & visible
    assert "sbx_user:x:1000:1000" in p["files"]["/etc/passwd"]


def test_an_interpreter_prefix_is_bound_at_its_own_path_unless_already_under_a_bound_part(tmp_path):
    p = _profile(tmp_path, extra_ro=["/opt/python3.11", "/usr/lib/python3.11"])
    assert ("/opt/python3.11", "/opt/python3.11") in p["ro"]
    assert ("/usr/lib/python3.11", "/usr/lib/python3.11") not in p["ro"]   # /usr is bound already
