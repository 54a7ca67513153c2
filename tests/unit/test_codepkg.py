import io
import stat
import zipfile

import pytest

from appliance.core import codepkg
from appliance.core.errors import PayloadTooLarge, UnsafeCode, ValidationError

LIMITS = codepkg.Limits(max_zip_bytes=1 << 20, max_unpacked_bytes=4 << 20, max_files=10)


def make_zip(entries, *, compression=zipfile.ZIP_DEFLATED):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as zf:
        for name, data, mode in entries:
            info = zipfile.ZipInfo(name)
            info.external_attr = mode << 16
            info.compress_type = compression
            zf.writestr(info, data)
    return buf.getvalue()


def regular(name, data=b"x"):
    return (name, data, stat.S_IFREG | 0o644)


def test_a_plain_package_is_accepted_and_described():
    data = make_zip([regular("index.py", b"def handler(e, c):\n    return 1\n"), regular("lib/util.py")])
    info = codepkg.inspect_zip(data, LIMITS)
    assert info.files == 2
    assert info.names == ("index.py", "lib/util.py")
    assert info.digest == codepkg.sha256(data)


@pytest.mark.parametrize("name", ["../evil.py", "a/../../evil.py", "/etc/passwd", "C:/x.py", "a\\..\\b.py"])
def test_paths_that_escape_the_package_are_refused(name):
    with pytest.raises(UnsafeCode) as err:
        codepkg.inspect_zip(make_zip([regular(name)]), LIMITS)
    assert err.value.field == "code"


def test_symlinks_are_refused():
    data = make_zip([regular("index.py"), ("link", b"/etc/passwd", stat.S_IFLNK | 0o777)])
    with pytest.raises(UnsafeCode, match="symbolic link"):
        codepkg.inspect_zip(data, LIMITS)


def test_too_many_files_are_refused():
    data = make_zip([regular(f"f{i}.py") for i in range(11)])
    with pytest.raises(UnsafeCode, match="11 entries"):
        codepkg.inspect_zip(data, LIMITS)


def test_a_zip_bomb_is_refused():
    data = make_zip([regular("index.py", b"\0" * (8 << 20))])
    assert len(data) < 64 << 10
    with pytest.raises(UnsafeCode, match="bomb|unpacked size"):
        codepkg.inspect_zip(data, LIMITS)


def test_declared_sizes_that_lie_are_caught_while_inflating():
    data = bytearray(make_zip([regular("index.py", b"a" * (5 << 20))], compression=zipfile.ZIP_STORED))
    # Forge the central directory's uncompressed size down to 10 bytes.
    cd = data.rfind(b"PK\x01\x02")
    data[cd + 24:cd + 28] = (10).to_bytes(4, "little")
    with pytest.raises(UnsafeCode):
        codepkg.inspect_zip(bytes(data), codepkg.Limits(max_zip_bytes=8 << 20, max_unpacked_bytes=4 << 20))


def test_something_that_is_not_a_zip_is_refused_with_the_fix():
    with pytest.raises(UnsafeCode, match="not a readable zip.*filename=index.py"):
        codepkg.inspect_zip(b"def handler(e, c): pass\n", LIMITS)


def test_oversize_packages_are_refused():
    with pytest.raises(PayloadTooLarge):
        codepkg.inspect_zip(b"PK" + b"\0" * (1 << 20), LIMITS)


@pytest.mark.filterwarnings("ignore:Duplicate name")
def test_duplicate_entries_are_refused():
    data = make_zip([regular("index.py"), regular("index.py")])
    with pytest.raises(UnsafeCode, match="twice"):
        codepkg.inspect_zip(data, LIMITS)


def test_single_file_zips_are_deterministic():
    a = codepkg.zip_single_file("index.py", b"x = 1\n")
    b = codepkg.zip_single_file("index.py", b"x = 1\n")
    assert a == b
    assert codepkg.inspect_zip(a, LIMITS).names == ("index.py",)


@pytest.mark.parametrize("name", ["../index.py", "dir/index.py", "index.sh"])
def test_single_file_names_are_checked(name):
    with pytest.raises(ValidationError):
        codepkg.zip_single_file(name, b"x")


def test_unpack_is_read_only_and_byte_compiled(tmp_path):
    data = make_zip([regular("index.py", b"def handler(e, c):\n    return 1\n")])
    dest = codepkg.unpack(data, tmp_path / "abc", LIMITS)
    assert (dest / "index.py").read_bytes().startswith(b"def handler")
    assert not (dest / "index.py").stat().st_mode & 0o222
    assert list((dest / "__pycache__").glob("index.*.pyc"))
    # A second unpack of the same digest is a no-op.
    assert codepkg.unpack(data, tmp_path / "abc", LIMITS) == dest
    assert [p.name for p in tmp_path.iterdir()] == ["abc"]
    codepkg.remove_tree(dest)
    assert not dest.exists()


def test_unpack_of_an_unsafe_zip_leaves_nothing_behind(tmp_path):
    with pytest.raises(UnsafeCode):
        codepkg.unpack(make_zip([regular("../x.py")]), tmp_path / "abc", LIMITS)
    assert list(tmp_path.iterdir()) == []


def test_entries_with_permission_bits_only_are_regular_files():
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("index.py", "x = 1\n")     # external_attr = 0o600 << 16, no file type bits
    assert codepkg.inspect_zip(buf.getvalue(), LIMITS).files == 1


@pytest.mark.parametrize("ftype", [stat.S_IFCHR, stat.S_IFIFO, stat.S_IFBLK])
def test_device_files_and_fifos_are_refused(ftype):
    with pytest.raises(UnsafeCode, match="special file"):
        codepkg.inspect_zip(make_zip([("dev", b"", ftype | 0o644)]), LIMITS)


@pytest.mark.parametrize("entries", [
    ["./index.py", "index.py"],
    ["a//b.py", "a/b.py"],
    ["a", "a/b"],
    ["lib/x", "lib/x/y/z.py"],
])
def test_entries_that_collide_once_normalised_are_refused(entries, tmp_path):
    data = make_zip([regular(n) for n in entries])
    with pytest.raises(UnsafeCode, match="twice|directory") as err:
        codepkg.inspect_zip(data, LIMITS)
    assert err.value.status == 400
    with pytest.raises(UnsafeCode):
        codepkg.unpack(data, tmp_path / "out", LIMITS)
    assert not (tmp_path / "out").exists()


def test_dot_slash_entries_unpack_to_their_normalised_path(tmp_path):
    data = make_zip([regular("./index.py", b"x = 1\n"), ("./", b"", stat.S_IFDIR | 0o755)])
    info = codepkg.inspect_zip(data, LIMITS)
    assert info.names == ("index.py",)
    out = codepkg.unpack(data, tmp_path / "out", LIMITS, compile_python=False)
    assert (out / "index.py").read_bytes() == b"x = 1\n"


def test_a_package_of_many_small_bomb_entries_is_refused_as_a_whole():
    # Each 512 KiB entry of zeros is under the per-entry bomb threshold; the whole inflates ~1000x.
    limits = codepkg.Limits(max_zip_bytes=1 << 20, max_unpacked_bytes=64 << 20, max_files=100)
    data = make_zip([regular(f"z{i}.bin", b"\0" * (512 << 10)) for i in range(16)])
    with pytest.raises(UnsafeCode, match="inflates .*x"):
        codepkg.inspect_zip(data, limits)


def test_ordinary_compressible_source_passes_the_package_ratio():
    source = b"".join(b"def f%d(event, context):\n    return {'n': %d}\n" % (i, i) for i in range(20000))
    data = make_zip([regular("index.py", source)])
    limits = codepkg.Limits(max_zip_bytes=1 << 20, max_unpacked_bytes=64 << 20, max_files=100)
    assert codepkg.inspect_zip(data, limits).unpacked_size == len(source)
