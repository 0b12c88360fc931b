"""--rate against real subsystems: a fixed rate bounds the copy (the bound is a least duration,
which a slow machine only makes longer), auto yields to a busy writer and still completes,
and side-store pressure is relieved at once however low the rate."""

import os
import subprocess
import threading
import time

import pytest

from testkit.workload import connect_unix

from helpers import REPO, TZERO, last_json, make_image, tzero, wait_for

MiB = 1 << 20


def backup(sub, out, *extra, **kw) -> dict:
    proc = tzero("backup", "-s", sub.control, "-o", out, "--json", "--no-progress", *extra, **kw)
    return last_json(proc.stdout)


def restored(tmp_path, out, name: str) -> bytes:
    tzero("restore", out, "--to", tmp_path / "restored")
    with open(tmp_path / "restored" / f"{name}.img", "rb") as f:
        return f.read()


def test_backup_at_a_fixed_rate_takes_at_least_its_size_over_the_rate(tmp_path, serve):
    initial = make_image(tmp_path / "a.img", 64 * MiB, seed=3)
    sub = serve("s", {"a": tmp_path / "a.img"})
    summary = backup(sub, tmp_path / "out.tzb", "--rate", "16M")
    # 64 MiB at 16 MiB/s: 4 s, less the first slice (0.1 s) and one request in debt (1 MiB).
    assert summary["elapsed_s"] >= 3.0, summary
    assert summary["rate"] == "16 MiB/s" and summary["rate_waited_s"] > 2.0
    assert restored(tmp_path, tmp_path / "out.tzb", "a") == initial


def test_backup_rate_comes_from_the_environment_and_a_bad_one_is_one_line(tmp_path, serve):
    make_image(tmp_path / "a.img", 4 * MiB, seed=4)
    sub = serve("s", {"a": tmp_path / "a.img"})
    summary = backup(sub, tmp_path / "out.tzb", env={**os.environ, "TZERO_RATE": "auto"})
    assert summary["rate"] == "auto"
    bad = tzero("backup", "-s", sub.control, "-o", tmp_path / "bad.tzb", "--rate", "fast", check=False)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "--rate" in bad.stderr
    assert sub.status()["session"] is None, "nothing was frozen for a refused rate"


class Writer(threading.Thread):
    """Writes 4 KiB blocks all over SIZE bytes of EXPORT from AT, as fast as it can, until stopped."""

    def __init__(self, socket: str, export: str, size: int, at: int = 0):
        super().__init__(daemon=True)
        self.socket, self.export, self.size, self.at = socket, export, size, at
        self.stop = threading.Event()
        self.writes = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            h = connect_unix(self.socket, self.export)
            block = os.urandom(4096)
            n = 0
            while not self.stop.is_set():
                n = (n * 7919 + 4099) % (self.size // 4096)
                h.pwrite(block, self.at + n * 4096)
                self.writes += 1
            h.shutdown()
        except BaseException as e:  # the test reports it
            self.error = e

    def finish(self) -> None:
        self.stop.set()
        self.join(30)
        assert self.error is None, repr(self.error)


@pytest.mark.parametrize("read_path", ["auto", "nbd"])  # the write count from the mapping, or from pulses
def test_backup_at_rate_auto_yields_to_a_continuous_writer_and_completes(tmp_path, serve, read_path):
    """The writers keep to the export's last MiB, which the dataset leaves out: their writes are
    counted but save no chunk, so auto yields to them (rate.py) as soon as it has seen them
    (its first look locally, the first pulse over NBD) and still completes at its floor."""
    make_image(tmp_path / "a.img", 64 * MiB, seed=5)
    sub = serve("s", {"a": tmp_path / "a.img"})
    writers = [Writer(sub.socket, "a", MiB, at=63 * MiB) for _ in range(2)]  # two connections: busy on a loaded host
    for w in writers:
        w.start()
    try:
        wait_for(lambda: sum(w.writes for w in writers) >= 400, 30, "the writers to get going")
        summary = backup(sub, tmp_path / "out.tzb", "--rate", "auto", "--read-path", read_path,
                         "--lease", "1s", "--dataset", "d=a:0+63M")  # a pulse every 0.25 s, and every release
        assert all(w.is_alive() for w in writers), "the writers went on throughout"
    finally:
        for w in writers:
            w.finish()
    assert summary["rate"] == "auto" and summary["chunks_cow"] == 0
    # Whether it then waited depends on how fast this host copies (the floor is 64 MiB/s).
    assert summary["rate_yields"] >= 1, "the copy turned to its floor for the writers"
    assert summary["bytes_read"] >= 63 * MiB
    tzero("verify", tmp_path / "out.tzb")


def test_pressure_is_relieved_at_once_under_a_low_rate_and_the_side_store_never_overflows(tmp_path, serve):
    """The side store holds 512 KiB of memory and at most 256 KiB of spill (a small tmpfs when
    this runs as root): 12 chunks. The writer saves a new chunk every 100 ms (pressure is heard
    with every pulse, every 0.25 s with a 1 s lease) over a copy that --rate 2M stretches to
    seconds; only fetching them at once keeps the side store from filling."""
    size = 16 * MiB
    initial = make_image(tmp_path / "a.img", size, seed=6)
    side = tmp_path / "side"
    side.mkdir()
    mounted = os.geteuid() == 0 and subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs",
                                                    str(side)]).returncode == 0
    try:
        sub = serve("s", {"a": tmp_path / "a.img"}, "--chunk", "64K", "--side-memory", "512K",
                    "--side-dir", side)
        h = connect_unix(sub.socket, "a")
        with subprocess.Popen([*TZERO, "backup", "-s", sub.control, "-o", tmp_path / "out.tzb", "--json",
                               "--no-progress", "--rate", "2M", "--lease", "1s"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO) as proc:
            wait_for(lambda: (sub.status()["session"] or {}).get("phase") == "active", 30, "an active session")
            for c in range(size // (64 << 10) - 1, 0, -2):  # from the end: chunks the in-order copy reaches last
                h.pwrite(bytes([c % 251 + 1]) * 4096, c * (64 << 10) + 512)
                time.sleep(0.1)
                if proc.poll() is not None:
                    break
            out, err = proc.communicate(120)
        h.shutdown()
        assert proc.returncode == 0, err
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(side)], check=False)
    summary = last_json(out)
    assert summary["chunks_cow"] >= 30, "the writer saved chunks throughout the copy, far beyond 12"
    assert summary["chunks_opportunistic"] >= 10, "pressure had saved chunks fetched ahead of the paced stream"
    # At least half the export is read in order (the writer saves every other chunk at most): >= 4 s at 2M.
    assert summary["elapsed_s"] >= 3.0, "the rate held the in-order copy back all the while"
    assert restored(tmp_path, tmp_path / "out.tzb", "a") == initial
