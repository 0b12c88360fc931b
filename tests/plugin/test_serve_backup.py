"""tzero serve-backup: standard NBD tools read a backup as it is, and see what restore gives."""

import json
import os
import shutil
import subprocess

import pytest

from helpers import BackupServer, last_json, make_image, tzero

pytestmark = pytest.mark.skipif(not all(shutil.which(t) for t in ("nbdcopy", "nbdinfo", "qemu-img")),
                                reason="nbdcopy, nbdinfo (libnbd-bin) and qemu-img (qemu-utils) are needed")


@pytest.fixture(params=["none", "zstd:3"])
def served(request, tmp_path, serve):
    """A backup of a partly sparse stripe and a range, restored, and served."""
    for i, n in enumerate("xyz"):
        make_image(tmp_path / f"{n}.img", 4 << 20, seed=i, zero_every=3)
        with open(tmp_path / f"{n}.img", "r+b") as f:  # a compressible stretch among random bytes
            f.seek(1 << 19)
            f.write(f"export {n} of the served backup ".encode() * 16384)
    s1 = serve("s1", {"x": tmp_path / "x.img"})
    s2 = serve("s2", {"y": tmp_path / "y.img", "z": tmp_path / "z.img"})
    backup = tmp_path / "b.tzb"
    summary = last_json(tzero("backup", "-s", s1.control, "-s", s2.control, "-o", backup, "--json",
                              "--no-progress", "--compress", request.param,
                              "--dataset", "vol=stripe:128K:x,y", "--dataset", "head=z:0+1M").stdout)
    assert summary["datasets"] == ["vol", "head"]
    if request.param != "none":
        assert summary["stored_bytes"] < summary["data_bytes"]
    tzero("restore", backup, "--to", tmp_path / "restored")
    x, y, z = ((tmp_path / f"{n}.img").read_bytes() for n in "xyz")
    stripe = 128 << 10
    volume = b"".join(leg[k:k + stripe] for k in range(0, len(x), stripe) for leg in (x, y))
    assert (tmp_path / "restored" / "vol.img").read_bytes() == volume
    assert (tmp_path / "restored" / "head.img").read_bytes() == z[:1 << 20]
    server = BackupServer(tmp_path, backup)
    yield server, tmp_path / "restored"
    assert server.stop() == 0
    assert not os.path.exists(server.socket), "the socket is removed on SIGTERM"


@pytest.mark.parametrize("name", ["vol", "head"])
def test_serve_backup_read_by_nbdcopy_equals_the_restore(served, tmp_path, name):
    server, restored = served
    subprocess.run(["nbdcopy", server.uri(name), str(tmp_path / "copy.img")], check=True)
    assert (tmp_path / "copy.img").read_bytes() == (restored / f"{name}.img").read_bytes()


@pytest.mark.parametrize("name", ["vol", "head"])
def test_serve_backup_converted_by_qemu_img_to_qcow2_equals_the_restore(served, tmp_path, name):
    server, restored = served
    out = tmp_path / "out.qcow2"
    subprocess.run(["qemu-img", "convert", "-O", "qcow2", server.uri(name), str(out)], check=True)
    compare = subprocess.run(["qemu-img", "compare", "-f", "qcow2", "-F", "raw", str(out),
                              str(restored / f"{name}.img")], capture_output=True, text=True)
    assert compare.returncode == 0, compare.stdout + compare.stderr


def test_serve_backup_lists_every_dataset_and_maps_holes(served):
    server, restored = served
    listing = subprocess.run(["nbdinfo", "--list", "--json", server.uri("")], capture_output=True, text=True,
                             check=True)
    exports = json.loads(listing.stdout)["exports"]
    assert [(e["export-name"], e["export-size"], e["is_read_only"]) for e in exports] == \
        [("vol", 8 << 20, True), ("head", 1 << 20, True)]
    mapping = json.loads(subprocess.run(["nbdinfo", "--map", "--json", server.uri("head")], capture_output=True,
                                        text=True, check=True).stdout)
    holes = [(m["offset"], m["length"]) for m in mapping if m["type"] & 1]
    image = (restored / "head.img").read_bytes()
    assert holes and all(image[o:o + n] == bytes(n) for o, n in holes), "every reported hole reads as zeros"
    assert (0, 65536) in holes, "make_image leaves every third 64 KiB piece as a hole, the first among them"


def test_serve_backup_refuses_a_damaged_backup_with_one_line(tmp_path):
    bad = tmp_path / "bad.tzb"
    bad.write_bytes(b"\x89TZB\r\n\x1a\n" + bytes(100))
    proc = tzero("serve-backup", bad, "--socket", tmp_path / "s.sock", check=False)
    assert proc.returncode == 4 and proc.stderr.count("\n") == 1 and str(bad) in proc.stderr
    assert not (tmp_path / "s.sock").exists()


def test_serve_backup_of_an_incremental_serves_the_image_at_its_time_zero(tmp_path, serve):
    make_image(tmp_path / "a.img", 4 << 20, seed=3, zero_every=3)
    s = serve("s", {"a": tmp_path / "a.img"})
    tzero("backup", "-s", s.control, "-o", tmp_path / "full.tzb", "--no-progress")
    h = s.connect("a")
    h.pwrite(b"changed since the full backup" * 100, 70000)
    h.zero(1 << 20, 2 << 20)  # data turned to zeros: a zero record, a hole when served
    h.shutdown()
    tzero("backup", "-s", s.control, "-o", tmp_path / "inc.tzb", "--since", tmp_path / "full.tzb", "--no-progress")
    server = BackupServer(tmp_path, tmp_path / "inc.tzb")
    try:
        subprocess.run(["nbdcopy", server.uri("a"), str(tmp_path / "copy.img")], check=True)
        mapping = json.loads(subprocess.run(["nbdinfo", "--map", "--json", server.uri("a")], capture_output=True,
                                            text=True, check=True).stdout)
    finally:
        assert server.stop() == 0
    assert (tmp_path / "copy.img").read_bytes() == (tmp_path / "a.img").read_bytes()
    holes = [(m["offset"], m["length"]) for m in mapping if m["type"] & 1]
    assert any(o <= 2 << 20 and o + n >= 3 << 20 for o, n in holes), "the zeroed megabyte is a hole"
