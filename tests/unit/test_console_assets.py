"""The control API says when the console's bundle was never built, instead of serving a blank page."""

import pytest

from appliance.control.api import CONSOLE_DIR, check_console_built
from appliance.core.errors import ConsoleNotBuilt


def test_the_page_and_the_bundle_need_a_built_bundle(tmp_path):
    for name in ("index.html", "dist/console.js", "dist/console.css"):
        with pytest.raises(ConsoleNotBuilt) as exc:
            check_console_built(name, tmp_path)
        assert "make console" in exc.value.message and exc.value.status == 503
    check_console_built("console.css", tmp_path)  # our own stylesheet is not part of the bundle
    (tmp_path / "console.js").write_text("")
    check_console_built("index.html", tmp_path)
    check_console_built("dist/console.js", tmp_path)


def test_the_bundle_sources_and_lock_file_are_committed_and_the_build_is_not():
    src = CONSOLE_DIR / "src"
    assert (src / "package.json").is_file() and (src / "package-lock.json").is_file()
    ignored = (CONSOLE_DIR.parents[2] / ".gitignore").read_text().split()
    assert "node_modules/" in ignored and "appliance/control/console/dist/" in ignored
