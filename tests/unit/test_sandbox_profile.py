"""What an instance's sandbox profile lets it see (the profile is pure data; applying it is integration-tested)."""

import os

from appliance.instances import sandbox


def _profile(tmp_path, **kw):
    return sandbox.profile(root=str(tmp_path / "root"), code_dir=str(tmp_path / "code"),
                           runtime_dir=str(tmp_path / "rt"), socket_dir=str(tmp_path / "sock"), uid=420123,
                           network=False, **kw)


def test_the_code_and_runtime_are_read_only_and_only_the_socket_dir_is_writable(tmp_path):
    p = _profile(tmp_path)
    assert sorted(p["mounts"]) == sorted([(str(tmp_path / "code"), sandbox.TASK_DIR, True),
                                          (str(tmp_path / "rt"), sandbox.RUNTIME_DIR, True),
                                          (str(tmp_path / "sock"), sandbox.SOCKET_DIR, False)])
    assert {dst for _, dst, _ in p["mounts"]} <= set(sandbox.INSTANCE_MOUNT_POINTS)
    assert p["cwd"] == sandbox.TASK_DIR and p["uid"] == 420123 and p["network"] is False


def test_the_shared_part_names_nothing_of_the_instance(tmp_path):
    """What a spare child builds ahead of time must be the same for every instance of a profile."""
    p, q = _profile(tmp_path), sandbox.profile(root=str(tmp_path / "root"), code_dir="/elsewhere/code",
                                               runtime_dir=None, socket_dir="/elsewhere/sock", uid=420999,
                                               network=False)
    assert p["base"] == q["base"]
    assert str(tmp_path / "code") not in repr(p["base"]) and "420123" not in repr(p["base"])


def test_only_the_listed_parts_of_etc_are_visible_and_no_secrets(tmp_path):
    p = _profile(tmp_path)
    base = p["base"]
    visible = ({dst for _, dst in base["ro"]} | {dst for _, dst in base["links"]} | set(base["files"])
               | {dst for _, dst, _ in p["mounts"]})
    etc = {d for d in visible if d.startswith("/etc/")}
    languages = {part for lang in sandbox.LANGUAGES.values() for part in lang["parts"]}
    assert etc <= ({"/etc/" + part for part in sandbox.ETC_PARTS} | {"/etc/passwd", "/etc/group", "/etc/hostname"}
                   | languages)
    assert not {"/etc/shadow", "/etc/gshadow", "/etc/ssl/private", "/root", "/home", "/var", "/proc"} & visible
    assert "sbx_user:x:1000:1000" in base["files"]["/etc/passwd"]


def test_an_interpreter_prefix_is_bound_at_its_own_path_unless_already_under_a_bound_part(tmp_path):
    p = _profile(tmp_path, extra_ro=["/opt/python3.11", "/usr/lib/python3.11"])
    assert ["/opt/python3.11", "/opt/python3.11"] in p["base"]["ro"]
    assert ["/usr/lib/python3.11", "/usr/lib/python3.11"] not in p["base"]["ro"]   # /usr is bound already


def test_the_languages_host_parts_are_bound_read_only_when_the_host_has_them(tmp_path):
    p = _profile(tmp_path)
    visible = {dst for _, dst in p["base"]["ro"]} | {dst for _, dst in p["base"]["links"]}
    for lang in sandbox.LANGUAGES.values():
        for part in lang["parts"]:
            if os.path.lexists(part) and not part.startswith("/etc/ssl/certs/"):
                assert part in visible, part
    assert not {d for d in visible if d.startswith("/etc/alternatives/")} - {"/etc/alternatives/java",
                                                                           "/etc/alternatives/python3"}
