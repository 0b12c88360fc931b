"""tzero restore: onto a directory, a file, a block device and an NBD export; and what is
left on disk when the backup is damaged or the target unfit."""

import io
import os
import shutil
import stat
import subprocess
import sys

import pytest

from backupformat import Dataset, StreamReader
from controller.restore.restore import restore
from controller.restore.targets import DeviceTarget

from backup_samples import (
    DATASETS,
    backup_bytes,
    bad_backup,
    flip_digest,
    flip_in_b,
    image,
    run_restore,
    truncate_in_b,
    write_backup,
)

nbd = pytest.importorskip("nbd")
needs_nbdkit = pytest.mark.skipif(shutil.which("nbdkit") is None, reason="nbdkit not installed")

GARBAGE = b"\xa5"


# -- onto a directory -----------------------------------------------------------------

def test_restore_to_dir_writes_every_dataset_exactly(tmp_path, capsys):
    code, out, err = run_restore(capsys, write_backup(tmp_path / "b.tzb"), "--to", tmp_path / "out")
    assert code == 0 and err == ""
    for i, (name, size) in enumerate(DATASETS):
        img = tmp_path / "out" / f"{name}.img"
        assert img.stat().st_size == size
        assert img.read_bytes() == image(i)
    assert sorted(os.listdir(tmp_path / "out")) == ["a.img", "b.img", "empty.img"]
    assert out.count("restored") == 3


def test_restore_to_dir_leaves_holes_sparse(tmp_path, capsys):
    records = [(0, 0, b"\x01" * 4096)]
    datasets = (("big", 64 << 20),)
    backup = write_backup(tmp_path / "b.tzb", records, datasets)
    assert run_restore(capsys, backup, "--to", tmp_path / "out")[0] == 0
    st = (tmp_path / "out" / "big.img").stat()
    assert st.st_size == 64 << 20
    assert st.st_blocks * 512 <= 1 << 20  # 4 KiB of data, not 64 MiB


def test_restore_to_dir_from_pipe(tmp_path):
    tzero = os.path.join(os.path.dirname(sys.executable), "tzero")
    p = subprocess.run([tzero, "restore", "-", "--to", tmp_path / "out"], input=backup_bytes(),
                       capture_output=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "out" / "b.img").read_bytes() == image(1)


@pytest.mark.parametrize("damage", [truncate_in_b, flip_in_b, flip_digest])
def test_restore_to_dir_damaged_backup_leaves_no_file(tmp_path, capsys, damage):
    code, out, err = run_restore(capsys, bad_backup(tmp_path, damage), "--to", tmp_path / "out")
    assert code == 4 and out == ""
    assert err.startswith(f"tzero: {tmp_path / 'bad.tzb'}: ") and err.count("\n") == 1
    assert os.listdir(tmp_path / "out") == []


def test_restore_to_dir_existing_image_refused_and_kept(tmp_path, capsys):
    backup = write_backup(tmp_path / "b.tzb")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "b.img").write_bytes(b"mine")
    code, _, err = run_restore(capsys, backup, "--to", tmp_path / "out")
    assert code == 2 and "b.img already exists; use --force" in err
    assert (tmp_path / "out" / "b.img").read_bytes() == b"mine"
    assert os.listdir(tmp_path / "out") == ["b.img"]


def test_restore_to_dir_force_replaces_existing_image(tmp_path, capsys):
    backup = write_backup(tmp_path / "b.tzb")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "b.img").write_bytes(b"mine")
    assert run_restore(capsys, backup, "--to", tmp_path / "out", "--force")[0] == 0
    assert (tmp_path / "out" / "b.img").read_bytes() == image(1)


def test_restore_to_dir_force_with_damaged_backup_keeps_old_image(tmp_path, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "b.img").write_bytes(b"mine")
    code, _, _ = run_restore(capsys, bad_backup(tmp_path, flip_digest), "--to", tmp_path / "out",
                             "--force")
    assert code == 4
    assert (tmp_path / "out" / "b.img").read_bytes() == b"mine"
    assert os.listdir(tmp_path / "out") == ["b.img"]


def test_restore_to_dir_leaves_another_runs_partial_alone(tmp_path, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "a.img.partial").write_bytes(GARBAGE * (1 << 20))
    assert run_restore(capsys, write_backup(tmp_path / "b.tzb"), "--to", tmp_path / "out")[0] == 0
    assert (tmp_path / "out" / "a.img").read_bytes() == image(0)
    assert (tmp_path / "out" / "a.img.partial").read_bytes() == GARBAGE * (1 << 20), "not this run's to touch"
    assert sorted(os.listdir(tmp_path / "out")) == ["a.img", "a.img.partial", "b.img", "empty.img"]


def test_restore_to_dir_makes_images_private_whatever_the_umask(tmp_path, capsys):
    old = os.umask(0)
    try:
        assert run_restore(capsys, write_backup(tmp_path / "b.tzb"), "--to", tmp_path / "out")[0] == 0
    finally:
        os.umask(old)
    for name in ("a.img", "b.img", "empty.img"):
        assert stat.S_IMODE((tmp_path / "out" / name).stat().st_mode) == 0o600, "disk images are the owner's only"


def test_restore_force_over_a_world_readable_image_leaves_a_private_one(tmp_path, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "b.img").write_bytes(b"mine")
    os.chmod(tmp_path / "out" / "b.img", 0o644)
    assert run_restore(capsys, write_backup(tmp_path / "b.tzb"), "--to", tmp_path / "out", "--force")[0] == 0
    assert stat.S_IMODE((tmp_path / "out" / "b.img").stat().st_mode) == 0o600


def test_restore_to_existing_file_without_dataset_is_usage_error(tmp_path, capsys):
    (tmp_path / "f").write_bytes(b"")
    code, _, err = run_restore(capsys, write_backup(tmp_path / "b.tzb"), "--to", tmp_path / "f")
    assert code == 2 and "--dataset NAME" in err


def test_restore_to_nbd_uri_without_dataset_is_usage_error(tmp_path, capsys):
    code, _, err = run_restore(capsys, write_backup(tmp_path / "b.tzb"), "--to",
                               "nbd+unix:///a?socket=/nonexistent")
    assert code == 2 and "--dataset NAME" in err


# -- one dataset onto a file -----------------------------------------------------------

def test_restore_dataset_to_new_file(tmp_path, capsys):
    code, out, _ = run_restore(capsys, write_backup(tmp_path / "b.tzb"), "--dataset", "b",
                               "--to", tmp_path / "b.raw")
    assert code == 0 and out == f"restored 'b' (97.7 KiB) to {tmp_path / 'b.raw'}\n"
    assert (tmp_path / "b.raw").read_bytes() == image(1)
    assert sorted(os.listdir(tmp_path)) == ["b.raw", "b.tzb"]


def test_restore_dataset_to_directory_writes_name_img(tmp_path, capsys):
    (tmp_path / "d").mkdir()
    assert run_restore(capsys, write_backup(tmp_path / "b.tzb"), "--dataset", "a",
                       "--to", tmp_path / "d")[0] == 0
    assert os.listdir(tmp_path / "d") == ["a.img"]
    assert (tmp_path / "d" / "a.img").read_bytes() == image(0)


def test_restore_dataset_to_existing_file_refused_without_force(tmp_path, capsys):
    (tmp_path / "b.raw").write_bytes(b"mine")
    code, _, err = run_restore(capsys, write_backup(tmp_path / "b.tzb"), "--dataset", "b",
                               "--to", tmp_path / "b.raw")
    assert code == 2 and "exists; use --force" in err
    assert (tmp_path / "b.raw").read_bytes() == b"mine"


def test_restore_dataset_damaged_in_other_dataset_leaves_no_file(tmp_path, capsys):
    code, _, err = run_restore(capsys, bad_backup(tmp_path, flip_in_b), "--dataset", "a",
                               "--to", tmp_path / "a.raw")
    assert code == 4 and "dataset 'b' at offset 65536: record checksum mismatch" in err
    assert sorted(os.listdir(tmp_path)) == ["bad.tzb"]


def test_restore_unknown_dataset_exits_2_listing_names(tmp_path, capsys):
    backup = write_backup(tmp_path / "b.tzb")
    code, _, err = run_restore(capsys, backup, "--dataset", "zz", "--to", tmp_path / "x")
    assert code == 2
    assert err == f"tzero: {backup} has no dataset 'zz'; it holds 'a', 'b', 'empty'\n"
    assert not (tmp_path / "x").exists()


# -- in place: existing data in the gaps must become zeros --------------------------

def test_device_target_zeroes_gaps_and_tail_keeps_beyond(tmp_path):
    dev = tmp_path / "dev"
    dev.write_bytes(GARBAGE * (200_000))
    fd = os.open(dev, os.O_WRONLY)
    target = DeviceTarget(fd, str(dev), 200_000, Dataset("b", 100_000))
    restore(StreamReader(io.BytesIO(backup_bytes())), "b.tzb", {1: target})
    data = dev.read_bytes()
    assert data[:100_000] == image(1)
    assert data[100_000:] == GARBAGE * 100_000


def test_device_target_zeroes_tail_hole(tmp_path):
    dev = tmp_path / "dev"
    dev.write_bytes(GARBAGE * 8192)
    blob = backup_bytes([(0, 0, b"\x01" * 512)], (("t", 8000),))
    target = DeviceTarget(os.open(dev, os.O_WRONLY), str(dev), 8192, Dataset("t", 8000))
    restore(StreamReader(io.BytesIO(blob)), "t.tzb", {0: target})
    assert dev.read_bytes() == b"\x01" * 512 + bytes(8000 - 512) + GARBAGE * 192


def test_device_target_too_small_refused(tmp_path, capsys):
    from controller.errors import RestoreError
    dev = tmp_path / "dev"
    dev.write_bytes(b"")
    fd = os.open(dev, os.O_WRONLY)
    too_small = r"too small for dataset .a.: 4 KiB \(4096 bytes\), needs 256 KiB \(262144 bytes\)"
    with pytest.raises(RestoreError, match=too_small):
        DeviceTarget(fd, str(dev), 4096, Dataset("a", 262144))
    with pytest.raises(OSError):
        os.close(fd)  # the refused target closed it
