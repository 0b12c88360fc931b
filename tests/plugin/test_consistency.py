"""Time-zero consistency under load: dependent writers on three exports of two subsystems
keep writing while a backup runs; the restore must hold, for every writer, exactly
the initial content plus a prefix of its writes, cut at time zero."""

import datetime
import os
import subprocess
import threading
import time

import nbd
import pytest

from testkit.workload import DependentWriter, Opener, connect_unix, time_zero_problems

from helpers import REPO, TZERO, last_json, make_image, tzero, wait_for

SIZE = 16 << 20
WRITERS = 4
READ_STEP = 256 << 10
WRITES_PER_STEP = 6


class Load:
    """Images on two subsystems and writers going at them."""

    def __init__(self, tmp_path, serve, *options, opener: Opener = connect_unix):
        names = ["a", "c", "b"]  # a and c on s1, b on s2: stream order a, c, b
        self.paths = {n: str(tmp_path / f"{n}.img") for n in names}
        self.initial = [make_image(self.paths[n], SIZE, seed=i) for i, n in enumerate(names)]
        side = tmp_path / "side"
        side.mkdir()
        opts = [*options, "--side-dir", str(side)]
        self.s1 = serve("s1", {"a": self.paths["a"], "c": self.paths["c"]}, *opts)
        self.s2 = serve("s2", {"b": self.paths["b"]}, *opts)
        targets = [(self.s1.socket, "a"), (self.s1.socket, "c"), (self.s2.socket, "b")]
        self.writers = [DependentWriter(i, WRITERS, targets, [SIZE] * 3, seed=100 + i, opener=opener)
                        for i in range(WRITERS)]
        for w in self.writers:
            w.start()
        wait_for(lambda: all(len(w.log) >= 10 for w in self.writers), 30, "writers to get going")

    def writes(self) -> int:
        return sum(len(w.log) for w in self.writers)

    def backup_command(self, output: str, *extra) -> list[str]:
        # A small host memory bounds how far reads run ahead of the paced stream, so
        # writers still find uncopied chunks mid-copy.
        return [*TZERO, "backup", "-s", self.s1.control, "-s", self.s2.control, "-o", output,
                "--json", "--no-progress", "--host-memory", "8M", *extra]

    def stop(self) -> None:
        for w in self.writers:
            w.stop.set()
        for w in self.writers:
            w.join(30)
            assert w.error is None, f"{w.name} failed: {w.error!r}"

    def check(self, restored_dir, summary: dict) -> None:
        assert summary["datasets"] == ["a", "c", "b"]
        restored = []
        for n in ["a", "c", "b"]:
            with open(os.path.join(restored_dir, f"{n}.img"), "rb") as f:
                restored.append(f.read())
        tz = datetime.datetime.fromisoformat(summary["time_zero"]).timestamp()
        problems, cuts = time_zero_problems(self.writers, self.initial, restored, tz)
        assert not problems
        assert all(0 < k < len(w.log) for k, w in zip(cuts, self.writers, strict=True)), \
            "time zero fell mid-run for every writer"


def paced_copy(proc, sink, load: Load, step: int = READ_STEP) -> None:
    """Move the backup stream from PROC to SINK, STEP bytes at a time, letting writers land
    writes between reads, so that copy-before-write is certain to happen mid-copy."""
    while True:
        data = proc.stdout.read(step)
        if not data:
            return
        sink.write(data)
        target = load.writes() + WRITES_PER_STEP
        deadline = time.monotonic() + 5
        while load.writes() < target and time.monotonic() < deadline:
            time.sleep(0.001)


def backup_through_pipe(load: Load, tmp_path, *extra, step: int = READ_STEP) -> tuple[str, dict]:
    out = tmp_path / "backup.tzb"
    stderr = []
    with subprocess.Popen(load.backup_command("-", *extra), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          cwd=REPO) as proc, open(out, "wb") as sink:
        reader = threading.Thread(target=lambda: stderr.append(proc.stderr.read().decode()))
        reader.start()
        paced_copy(proc, sink, load, step)
        status = proc.wait(120)
        reader.join()
    assert status == 0, f"backup failed: {stderr}"
    return str(out), last_json(stderr[0])


@pytest.mark.parametrize("chunk", ["16K", "64K", "1M"])
def test_backup_under_dependent_writers_restores_a_prefix_at_time_zero(tmp_path, serve, chunk):
    load = Load(tmp_path, serve, "--chunk", chunk)
    try:
        out, summary = backup_through_pipe(load, tmp_path)
    finally:
        load.stop()
    assert summary["chunks_cow"] > 0, "the paced copy must have made writers hit uncopied chunks"
    assert summary["read_path"] == {"a": "local", "c": "local", "b": "local"}, "this host serves every view"
    tzero("verify", out)
    tzero("restore", out, "--to", tmp_path / "restored")
    load.check(tmp_path / "restored", summary)


def test_backup_written_behind_its_reads_reuses_read_buffers_only_once_written(tmp_path, serve):
    """The stream is written by a thread of its own (controller/backup/sink.py), which queues
    views of the read buffers themselves: with 1 MiB chunks and 8 MiB of host memory the pool
    has four 1 MiB buffers, fewer than the writer thread may hold queued, and a reader taking
    64 KiB at a time keeps that queue full, so every read buffer is handed out again right
    behind the writer thread while the writers write. The restore must hold exactly the
    time-zero content: a buffer reused before it was written would put later bytes in."""
    load = Load(tmp_path, serve, "--chunk", "1M")
    try:
        out, summary = backup_through_pipe(load, tmp_path, step=64 << 10)
    finally:
        load.stop()
    assert summary["chunks_cow"] > 0
    assert summary["peak_host_buffer_bytes"] <= 4 << 20, "four read buffers at most"
    tzero("verify", out)
    tzero("restore", out, "--to", tmp_path / "restored")
    load.check(tmp_path / "restored", summary)


def test_backup_over_nbd_only_under_dependent_writers_restores_a_prefix_at_time_zero(tmp_path, serve):
    load = Load(tmp_path, serve, "--chunk", "64K")
    try:
        out, summary = backup_through_pipe(load, tmp_path, "--read-path", "nbd")
    finally:
        load.stop()
    assert summary["chunks_cow"] > 0
    assert set(summary["read_path"].values()) == {"nbd (--read-path nbd)"}
    tzero("restore", out, "--to", tmp_path / "restored")
    load.check(tmp_path / "restored", summary)


def test_backup_with_tiny_side_memory_spills_and_copies_ahead_and_stays_exact(tmp_path, serve):
    load = Load(tmp_path, serve, "--chunk", "64K", "--side-memory", "128K")
    try:
        out, summary = backup_through_pipe(load, tmp_path)
    finally:
        load.stop()
    assert summary["chunks_cow"] > 0
    assert summary["side_peak_bytes"] > 128 << 10, "the side store must have spilled past its memory"
    assert summary["chunks_opportunistic"] > 0, "pressure must have made the copier fetch saved chunks ahead of order"
    tzero("restore", out, "--to", tmp_path / "restored")
    load.check(tmp_path / "restored", summary)


@pytest.mark.parametrize("rate", ["auto", "8M"])
def test_backup_at_a_rate_under_dependent_writers_restores_a_prefix_at_time_zero(tmp_path, serve, rate):
    """--rate changes when views are read, never what: the paced copy is exact too."""
    load = Load(tmp_path, serve, "--chunk", "64K")
    try:
        out, summary = backup_through_pipe(load, tmp_path, "--rate", rate)
    finally:
        load.stop()
    assert summary["rate"] == ("auto" if rate == "auto" else "8 MiB/s")
    assert summary["chunks_cow"] > 0
    tzero("restore", out, "--to", tmp_path / "restored")
    load.check(tmp_path / "restored", summary)


def test_backup_reading_saved_chunks_out_of_memory_and_spill_slots_under_writers_is_exact(tmp_path, serve):
    """Saved chunks read on this host straight out of the side store's slots (both its memory
    and its spill file: a side memory of four chunks spills at once) while writers keep
    saving, giving back and retaking slots: the restore is time zero, bit for bit."""
    load = Load(tmp_path, serve, "--chunk", "64K", "--side-memory", "256K")
    try:
        out, summary = backup_through_pipe(load, tmp_path)
    finally:
        load.stop()
    assert summary["read_path"] == {"a": "local", "c": "local", "b": "local"}
    assert summary["side_peak_bytes"] > 256 << 10, "the side store must have spilled past its memory"
    assert summary["local_saved_bytes"] > summary["local_saved_spill_bytes"] > 0, \
        "saved chunks must have been read here out of memory slots and spill slots"
    tzero("verify", out)
    tzero("restore", out, "--to", tmp_path / "restored")
    load.check(tmp_path / "restored", summary)


def test_backup_to_file_under_writers_restores_a_prefix_at_time_zero(tmp_path, serve):
    load = Load(tmp_path, serve, "--chunk", "64K")
    out = tmp_path / "backup.tzb"
    try:
        proc = subprocess.run(load.backup_command(str(out)), capture_output=True, text=True, cwd=REPO, timeout=120)
    finally:
        load.stop()
    assert proc.returncode == 0, proc.stderr
    summary = last_json(proc.stdout)
    assert not os.path.exists(f"{out}.partial")
    tzero("restore", out, "--to", tmp_path / "restored")
    load.check(tmp_path / "restored", summary)


def test_backup_piped_straight_into_restore_is_exact(tmp_path, serve):
    load = Load(tmp_path, serve, "--chunk", "64K")
    restored = tmp_path / "restored"
    errors = []
    try:
        with subprocess.Popen(load.backup_command("-"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              cwd=REPO) as backup, \
             subprocess.Popen([*TZERO, "restore", "-", "--to", str(restored)], stdin=subprocess.PIPE,
                              stderr=subprocess.PIPE, cwd=REPO) as restore:
            reader = threading.Thread(target=lambda: errors.append(backup.stderr.read().decode()))
            reader.start()
            paced_copy(backup, restore.stdin, load)
            restore.stdin.close()
            assert backup.wait(120) == 0
            reader.join()
            assert restore.wait(120) == 0, restore.stderr.read().decode()
    finally:
        load.stop()
    summary = last_json(errors[0])
    assert summary["chunks_cow"] > 0
    load.check(restored, summary)


class ReadingBack:
    """A live connection whose every write is FUA and is read straight back: the plugin's
    pwrite (the FUA flush after it) and its live pread, under a backup, in one handle."""

    def __init__(self, h: nbd.NBD) -> None:
        self.h = h
        self.fua = 0

    def pwrite(self, data: bytes, offset: int) -> None:
        self.h.pwrite(data, offset, nbd.CMD_FLAG_FUA)
        self.fua += 1
        back = self.h.pread(len(data), offset)
        assert back == data, f"a live read at {offset} did not return the write just acknowledged"

    def shutdown(self) -> None:
        self.h.shutdown()


def test_backup_under_fua_writers_reading_back_is_exact(tmp_path, serve):
    handles: list[ReadingBack] = []

    def opener(socket_path: str, export: str) -> ReadingBack:
        handles.append(ReadingBack(connect_unix(socket_path, export)))
        return handles[-1]

    load = Load(tmp_path, serve, "--chunk", "64K", opener=opener)  # type: ignore[arg-type]
    try:
        out, summary = backup_through_pipe(load, tmp_path)
    finally:
        load.stop()  # a failed read-back is a writer's error: stop() asserts there is none
    assert summary["chunks_cow"] > 0, "the paced copy must have made writers hit uncopied chunks"
    assert sum(h.fua for h in handles) == load.writes(), "every write went through the FUA path"
    tzero("restore", out, "--to", tmp_path / "restored")
    load.check(tmp_path / "restored", summary)
