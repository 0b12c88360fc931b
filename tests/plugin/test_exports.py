"""Live exports and time-zero views through real nbdkit and libnbd."""

import subprocess

import nbd
import pytest

from helpers import make_image, tzero
from raw_control import RawControl

SIZE = 4 << 20
CHUNK = 64 << 10


@pytest.fixture
def sub(tmp_path, serve):
    make_image(tmp_path / "a.img", SIZE, seed=1)
    return serve("s", {"a": tmp_path / "a.img"}, "--chunk", "64K")


@pytest.fixture
def session(sub):
    """An active session held by a raw control connection: (view name, control)."""
    ctl = RawControl(sub.control)
    ctl.rq("hello", version=1)
    view = ctl.rq("open")["views"]["a"]
    ctl.rq("freeze")
    ctl.rq("thaw")
    yield view, ctl
    ctl.close()


def test_live_export_serves_size_reads_writes_flush_and_fua(tmp_path, sub):
    h = sub.connect("a")
    assert h.get_size() == SIZE and h.can_flush() and h.can_fua() and h.can_trim() and h.can_zero()
    h.pwrite(b"q" * 4096, 8192, nbd.CMD_FLAG_FUA)
    h.flush()
    assert h.pread(4096, 8192) == b"q" * 4096
    with open(tmp_path / "a.img", "rb") as f:
        f.seek(8192)
        assert f.read(4096) == b"q" * 4096
    h.shutdown()


def test_live_export_extents_report_holes_of_a_sparse_file(tmp_path, sub):
    h = sub.connect("a", allocation=True)
    seen = []
    h.block_status(SIZE, 0, lambda ctx, off, entries, err: seen.extend(entries))
    holes = [(seen[i], seen[i + 1]) for i in range(0, len(seen), 2) if seen[i + 1] & nbd.STATE_HOLE]
    assert holes, "make_image leaves every fifth 64 KiB piece as a hole"
    assert holes[0][0] == CHUNK  # the first piece, at offset 0, is a hole of one piece
    h.shutdown()


@pytest.mark.parametrize("mutation", ["write", "zero", "trim"])
def test_view_keeps_time_zero_content_whatever_mutates_the_live_export(sub, session, mutation):
    view, _ = session
    live, v = sub.connect("a"), sub.connect(view)
    before = live.pread(3 * CHUNK, CHUNK)
    {"write": lambda: live.pwrite(b"x" * 1000, CHUNK + 500),
     "zero": lambda: live.zero(3 * CHUNK, CHUNK),
     "trim": lambda: live.trim(3 * CHUNK, CHUNK)}[mutation]()
    assert v.pread(3 * CHUNK, CHUNK) == before
    if mutation == "zero":
        assert live.pread(3 * CHUNK, CHUNK) == bytes(3 * CHUNK)
    live.shutdown()
    v.shutdown()


def test_view_is_read_only(sub, session):
    view, _ = session
    v = sub.connect(view)
    assert v.is_read_only()
    with pytest.raises(nbd.Error):
        v.pwrite(b"x", 0)
    v.shutdown()


def test_view_of_another_session_or_unknown_export_is_refused(sub, session):
    view, _ = session
    for name in ("a@deadbeef", "nope", "nope@" + view.split("@")[1]):
        with pytest.raises(nbd.Error):
            sub.connect(name)


def test_view_read_fails_after_the_session_ends(sub, session):
    view, ctl = session
    v = sub.connect(view)
    assert v.pread(512, 0) is not None
    ctl.rq("close")
    with pytest.raises(nbd.Error):
        v.pread(512, 0)
    v.shutdown()


def test_exports_are_listed_by_nbdinfo(sub):
    out = subprocess.run(["nbdinfo", "--list", f"nbd+unix://?socket={sub.socket}"], capture_output=True, text=True)
    assert out.returncode == 0 and 'export="a"' in out.stdout


def test_block_device_export_takes_its_size_from_the_device_and_zeroes_by_ioctl(serve, loop_device):
    sub = serve("blk", {"d": loop_device})
    h = sub.connect("d")
    assert h.get_size() == SIZE
    h.zero(CHUNK, 2 * CHUNK)
    assert h.pread(CHUNK, 2 * CHUNK) == bytes(CHUNK)
    h.shutdown()


@pytest.fixture
def two_disks(tmp_path, serve):
    """A subsystem serving disk0 and disk1, with what each holds."""
    images = {n: make_image(tmp_path / f"{n}.img", SIZE, seed=20 + i) for i, n in enumerate(["disk0", "disk1"])}
    return serve("two", {n: tmp_path / f"{n}.img" for n in images}, "--chunk", "64K"), images


def test_empty_export_name_is_refused_never_the_first_export(two_disks):
    sub, _ = two_disks
    h = nbd.NBD()
    with pytest.raises(nbd.Error, match="no export"):
        h.connect_unix(sub.socket)


def test_restore_onto_a_uri_with_an_empty_export_name_writes_nothing(tmp_path, two_disks):
    """The slip of the keyboard: two slashes, so 'disk1' is the URI's host and the export name is
    empty. Nothing may land on disk0 (the first export), --force or not."""
    sub, images = two_disks
    out = tmp_path / "b.tzb"
    tzero("backup", "-s", sub.control, "-o", out, "--no-progress", "--dataset", "disk1=disk1")
    for force in ([], ["--force"]):
        proc = tzero("restore", out, "--dataset", "disk1", "--to", f"nbd+unix://disk1?socket={sub.socket}", *force,
                     check=False)
        assert proc.returncode != 0 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
        assert "restoring" not in proc.stdout
    assert (tmp_path / "disk0.img").read_bytes() == images["disk0"]
    assert (tmp_path / "disk1.img").read_bytes() == images["disk1"]


def test_restore_onto_a_live_export_needs_force_and_names_the_export_first(tmp_path, two_disks):
    sub, images = two_disks
    out = tmp_path / "b.tzb"
    tzero("backup", "-s", sub.control, "-o", out, "--no-progress", "--dataset", "disk1=disk1")
    h = sub.connect("disk1")
    h.pwrite(b"later" * 1000, 0)
    h.shutdown()
    refused = tzero("restore", out, "--dataset", "disk1", "--to", sub.uri("disk1"), check=False)
    assert refused.returncode == 2 and "use --force" in refused.stderr and "'disk1'" in refused.stderr
    done = tzero("restore", out, "--dataset", "disk1", "--to", sub.uri("disk1"), "--force")
    assert done.stdout.splitlines()[0] == f"restoring 'disk1' (4 MiB) onto export 'disk1' of {sub.uri('disk1')}, " \
                                          f"4 MiB ({SIZE} bytes)"
    assert (tmp_path / "disk1.img").read_bytes() == images["disk1"]
    assert (tmp_path / "disk0.img").read_bytes() == images["disk0"]
