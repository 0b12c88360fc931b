"""Where a backup goes: each run owns its partial file and OUT's lock for its whole life; a run
that is refused or fails leaves nothing of its own and touches nothing of another's; a device
named as OUT is written in place or refused, never replaced."""

import os
import stat
import subprocess
import threading

import pytest

from common.fileio import is_partial_of
from controller.backup.output import BackupOutput, OutputBusy
from controller.errors import EXIT_RETRY, EXIT_USAGE, TzeroError, UsageError


def leftovers(directory, keep=()):
    return sorted(n for n in os.listdir(directory) if n not in keep)


def test_output_partial_is_the_runs_own_private_file_whatever_the_umask(tmp_path):
    out = tmp_path / "b.tzb"
    old = os.umask(0)
    try:
        o = BackupOutput(str(out), force=False)
        o.open()
        partials = [n for n in os.listdir(tmp_path) if is_partial_of(n, "b.tzb")]
        assert len(partials) == 1 and stat.S_IMODE((tmp_path / partials[0]).stat().st_mode) == 0o600
        o.write(b"stream")
        o.flush()
        o.commit()
    finally:
        os.umask(old)
    assert out.read_bytes() == b"stream" and stat.S_IMODE(out.stat().st_mode) == 0o600
    assert leftovers(tmp_path) == ["b.tzb"], "no partial, no lock file left behind"


def test_output_second_run_on_the_same_out_is_refused_and_touches_nothing(tmp_path):
    out = tmp_path / "b.tzb"
    first = BackupOutput(str(out), force=False)
    first.open()
    first.write(b"first run's bytes")
    second = BackupOutput(str(out), force=True)
    with pytest.raises(OutputBusy) as refused:
        second.open()
    assert refused.value.exit_code == EXIT_RETRY and "another tzero backup" in refused.value.message
    second.discard()  # what the command does on its way out
    first.flush()
    first.commit()
    assert out.read_bytes() == b"first run's bytes"
    assert leftovers(tmp_path) == ["b.tzb"]


def test_output_run_refused_later_deletes_nothing_of_the_run_that_holds_out(tmp_path):
    """The second run is refused before it makes anything; its clean-up (as after a `busy`
    subsystem) must not remove the first run's partial file."""
    out = tmp_path / "b.tzb"
    first = BackupOutput(str(out), force=False)
    first.open()
    before = leftovers(tmp_path)
    second = BackupOutput(str(out), force=False)
    with pytest.raises(OutputBusy):
        second.open()
    second.discard()
    assert leftovers(tmp_path) == before
    first.discard()
    assert leftovers(tmp_path) == []


def test_output_commit_never_replaces_a_file_that_appeared_meanwhile_without_force(tmp_path):
    out = tmp_path / "b.tzb"
    o = BackupOutput(str(out), force=False)
    o.open()
    o.write(b"complete backup")
    o.flush()
    out.write_bytes(b"somebody else's")
    with pytest.raises(TzeroError) as failed:
        o.commit()
    o.discard()
    assert out.read_bytes() == b"somebody else's"
    kept = [n for n in os.listdir(tmp_path) if is_partial_of(n, "b.tzb")]
    assert len(kept) == 1 and kept[0] in failed.value.message, "the complete backup is kept, and said where"
    assert (tmp_path / kept[0]).read_bytes() == b"complete backup"


def test_output_with_force_replaces_an_existing_backup_file(tmp_path):
    out = tmp_path / "b.tzb"
    out.write_bytes(b"old")
    o = BackupOutput(str(out), force=True)
    o.open()
    o.write(b"new")
    o.flush()
    o.commit()
    assert out.read_bytes() == b"new" and leftovers(tmp_path) == ["b.tzb"]


def test_output_partial_file_of_a_run_killed_outright_is_left_alone(tmp_path):
    """A run killed between its close and its rename leaves a complete backup under its partial
    name: it is that run's, and no later run removes it. Its stale lock is taken over."""
    out = tmp_path / "b.tzb"
    (tmp_path / "b.tzb.partial-0badf00d").write_bytes(b"killed run")
    (tmp_path / "b.tzb.lock").write_bytes(b"")
    o = BackupOutput(str(out), force=False)
    o.open()
    o.write(b"this run")
    o.flush()
    o.commit()
    assert leftovers(tmp_path) == ["b.tzb", "b.tzb.partial-0badf00d"]
    assert (tmp_path / "b.tzb.partial-0badf00d").read_bytes() == b"killed run"


@pytest.fixture
def tiny_fs(tmp_path):
    """A 64 KiB tmpfs (needs root and mount)."""
    d = tmp_path / "tiny"
    d.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(d)]).returncode:
        pytest.skip("cannot mount a small tmpfs here")
    yield d
    subprocess.run(["umount", "-l", str(d)], check=False)


def test_output_full_disk_leaves_no_partial_even_when_closing_fails_again(tiny_fs):
    o = BackupOutput(str(tiny_fs / "b.tzb"), force=False)
    o.open()
    with pytest.raises(TzeroError, match="no space left on device"):
        for _ in range(100):
            o.write(b"x" * 3000)  # what did not fit stays in the file's buffer: its close fails too
    o.discard()
    assert leftovers(tiny_fs) == []


def test_output_character_device_is_written_in_place_never_replaced(tmp_path):
    for force in (False, True):
        o = BackupOutput("/dev/null", force=force)
        o.open()
        o.write(b"stream")
        o.flush()
        o.commit()
        assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
    assert not [n for n in os.listdir("/dev") if n.startswith("null.")]


def test_output_fifo_is_written_in_place_like_a_pipe(tmp_path):
    fifo = tmp_path / "tape"
    os.mkfifo(fifo)
    got = []

    def read():
        with open(fifo, "rb") as f:
            got.append(f.read())

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    o = BackupOutput(str(fifo), force=False)
    o.open()
    o.write(b"stream")
    o.flush()
    o.commit()
    reader.join(10)
    assert got == [b"stream"] and stat.S_ISFIFO(fifo.stat().st_mode)
    assert leftovers(tmp_path) == ["tape"]


@pytest.fixture
def loop_device(tmp_path):
    backing = tmp_path / "loop.img"
    backing.write_bytes(b"\xa5" * (256 << 10))
    proc = subprocess.run(["losetup", "-f", "--show", str(backing)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip("no loop device (needs root and losetup)")
    yield proc.stdout.strip(), backing
    subprocess.run(["losetup", "-d", proc.stdout.strip()], check=False)


def test_output_block_device_is_refused_never_replaced(loop_device):
    dev, backing = loop_device
    for force in (False, True):
        with pytest.raises(UsageError) as refused:
            BackupOutput(dev, force=force)
        assert refused.value.exit_code == EXIT_USAGE and "block device" in refused.value.message
    assert stat.S_ISBLK(os.stat(dev).st_mode) and backing.read_bytes() == b"\xa5" * (256 << 10)


def test_output_socket_or_directory_is_refused(tmp_path):
    import socket
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(tmp_path / "sock"))
    try:
        for target in (tmp_path / "sock", tmp_path):
            with pytest.raises(UsageError):
                BackupOutput(str(target), force=True)
    finally:
        s.close()
