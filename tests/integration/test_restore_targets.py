"""tzero restore onto real targets: a loop block device and NBD exports served by nbdkit's
memory plugin (in place: gaps zeroed, bytes beyond the dataset kept, damage said)."""

import subprocess

import nbd
import pytest

from backup_samples import bad_backup, flip_in_a, flip_in_b, image, run_restore, write_backup
from helpers import needs_nbdkit

GARBAGE = b"\xa5"


@pytest.fixture
def loop_device(tmp_path):
    backing = tmp_path / "loop.img"
    backing.write_bytes(GARBAGE * (256 << 10))
    try:
        dev = subprocess.run(["losetup", "-f", "--show", backing], capture_output=True,
                             text=True, timeout=30, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pytest.skip("no loop device (needs root and losetup)")
    yield dev, backing
    subprocess.run(["losetup", "-d", dev], timeout=30)


def test_restore_dataset_to_block_device_zeroes_gaps(loop_device, tmp_path, capsys):
    dev, backing = loop_device
    code, out, err = run_restore(capsys, write_backup(tmp_path / "b.tzb"), "--dataset", "b",
                                 "--to", dev, "--force")
    assert code == 0, err
    assert out.splitlines()[0] == f"restoring 'b' (97.7 KiB) onto block device {dev}, 256 KiB ({256 << 10} bytes)"
    data = backing.read_bytes()
    assert data[:100_000] == image(1) and data[100_000:] == GARBAGE * ((256 << 10) - 100_000)


def test_restore_dataset_to_too_small_block_device_refused(loop_device, tmp_path, capsys):
    dev, backing = loop_device
    big = (("a", 512 << 10),)
    backup = write_backup(tmp_path / "b.tzb", [(0, 0, b"\x01" * 512)], big)
    code, _, err = run_restore(capsys, backup, "--dataset", "a", "--to", dev)
    assert code == 1 and "too small" in err
    assert backing.read_bytes() == GARBAGE * (256 << 10)


@pytest.fixture
def nbdkit(nbdkit_server):
    """start(size, readonly=False) -> (uri, read_back): an nbdkit memory export prefilled
    with garbage."""

    def start(size, readonly=False):
        sock = nbdkit_server("memory", str(size), options=["-r"] if readonly else [])
        uri = f"nbd+unix:///?socket={sock}"
        if not readonly:
            _nbd_io(uri, lambda h: h.pwrite(GARBAGE * size, 0))
        return uri, lambda: bytes(_nbd_io(uri, lambda h: h.pread(size, 0)))

    return start


def _nbd_io(uri, fn):
    h = nbd.NBD()
    h.connect_uri(uri)
    try:
        return fn(h)
    finally:
        h.shutdown()


@pytest.fixture
def nbd_export(nbdkit):
    """A 256 KiB export full of garbage: (uri, read_back)."""
    return nbdkit(256 << 10)


@needs_nbdkit
def test_restore_dataset_to_nbd_zeroes_gaps_keeps_beyond(nbd_export, tmp_path, capsys):
    uri, read_back = nbd_export
    code, out, err = run_restore(capsys, write_backup(tmp_path / "b.tzb"), "--dataset", "b",
                                 "--to", uri, "--force")
    assert code == 0, err
    assert out == (f"restoring 'b' (97.7 KiB) onto export '' of {uri}, 256 KiB ({256 << 10} bytes)\n"
                   f"restored 'b' (97.7 KiB) to {uri}\n")
    data = read_back()
    assert data[:100_000] == image(1)
    assert data[100_000:] == GARBAGE * ((256 << 10) - 100_000)


@needs_nbdkit
def test_restore_dataset_to_nbd_whole_size_dataset(nbd_export, tmp_path, capsys):
    uri, read_back = nbd_export
    assert run_restore(capsys, write_backup(tmp_path / "b.tzb"), "--dataset", "a",
                       "--to", uri, "--force")[0] == 0
    assert read_back() == image(0)


@needs_nbdkit
def test_restore_dataset_to_nbd_zeroes_tail_hole(nbd_export, tmp_path, capsys):
    uri, read_back = nbd_export
    backup = write_backup(tmp_path / "t.tzb", [(0, 4096, b"\x01" * 512)], (("t", 200_000),))
    assert run_restore(capsys, backup, "--dataset", "t", "--to", uri, "--force")[0] == 0
    expected = bytes(4096) + b"\x01" * 512 + bytes(200_000 - 4608)
    assert read_back() == expected + GARBAGE * ((256 << 10) - 200_000)


@needs_nbdkit
def test_restore_dataset_to_too_small_nbd_refused_untouched(nbdkit, tmp_path, capsys):
    uri, read_back = nbdkit(64 << 10)
    code, _, err = run_restore(capsys, write_backup(tmp_path / "b.tzb"), "--dataset", "a",
                               "--to", uri)
    assert code == 1
    assert err == f"tzero: {uri} is too small for dataset 'a': 64 KiB (65536 bytes), needs 256 KiB (262144 bytes)\n"
    assert read_back() == GARBAGE * (64 << 10)


@needs_nbdkit
def test_restore_dataset_to_read_only_nbd_refused(nbdkit, tmp_path, capsys):
    uri, _ = nbdkit(256 << 10, readonly=True)
    code, _, err = run_restore(capsys, write_backup(tmp_path / "b.tzb"), "--dataset", "b",
                               "--to", uri)
    assert code == 1 and err == f"tzero: {uri} is read-only\n"


@needs_nbdkit
def test_restore_dataset_to_nbd_damaged_says_incomplete(nbd_export, tmp_path, capsys):
    uri, _ = nbd_export
    backup = bad_backup(tmp_path, flip_in_b)
    code, _, err = run_restore(capsys, backup, "--dataset", "b", "--to", uri, "--force")
    assert code == 1
    assert err == (f"tzero: restore of 'b' onto {uri} is incomplete: {backup}: "
                   "dataset 'b' at offset 65536: record checksum mismatch\n")


@needs_nbdkit
def test_restore_dataset_to_nbd_damage_before_first_write_is_not_incomplete(
        nbd_export, tmp_path, capsys):
    uri, read_back = nbd_export
    backup = bad_backup(tmp_path, flip_in_a)
    code, _, err = run_restore(capsys, backup, "--dataset", "b", "--to", uri, "--force")
    assert code == 4, "a damaged backup, nothing written"
    assert err == f"tzero: {backup}: dataset 'a' at offset 0: record checksum mismatch\n"
    assert read_back() == GARBAGE * (256 << 10)


def test_restore_nbd_unreachable_exits_1_with_one_line(tmp_path, capsys):
    uri = f"nbd+unix:///?socket={tmp_path / 'none.sock'}"
    code, _, err = run_restore(capsys, write_backup(tmp_path / "b.tzb"), "--dataset", "b",
                               "--to", uri)
    assert code == 1 and err.startswith(f"tzero: cannot connect to {uri}: ")
    assert err.count("\n") == 1



@needs_nbdkit
def test_restore_dataset_to_nbd_without_force_is_refused_untouched(nbd_export, tmp_path, capsys):
    uri, read_back = nbd_export
    code, out, err = run_restore(capsys, write_backup(tmp_path / "b.tzb"), "--dataset", "b", "--to", uri)
    assert code == 2 and out == ""
    assert err == (f"tzero: {uri} is export '' of a running NBD server, 256 KiB ({256 << 10} bytes): restoring "
                   "overwrites it; use --force\n")
    assert read_back() == GARBAGE * (256 << 10)


def test_restore_dataset_to_block_device_without_force_is_refused_untouched(loop_device, tmp_path, capsys):
    dev, backing = loop_device
    code, out, err = run_restore(capsys, write_backup(tmp_path / "b.tzb"), "--dataset", "b", "--to", dev)
    assert code == 2 and out == ""
    assert err == (f"tzero: {dev} is a block device of 256 KiB ({256 << 10} bytes): restoring overwrites it; "
                   "use --force\n")
    assert backing.read_bytes() == GARBAGE * (256 << 10)
