"""Shared plumbing of the object store tests: tzero with the store's environment, subsystems
under dependent writers, and holding the store still while writers write."""

import contextlib
import datetime
import os
import signal
import subprocess
import time

from testkit.workload import DependentWriter, time_zero_problems

from helpers import REPO, TZERO, make_image, wait_for
from raw_control import RawControl

SIZE = 16 << 20
WRITERS = 4
HELD_WRITES = 300  # writes the writers make while the store is held, mid-copy


def s3(env, *args, check=True, timeout=300) -> subprocess.CompletedProcess:
    """Run tzero with ENV (the store's endpoint and keys)."""
    proc = subprocess.run([*TZERO, *map(str, args)], capture_output=True, text=True, timeout=timeout, cwd=REPO,
                          env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"tzero {' '.join(map(str, args))} exited {proc.returncode}:\n{proc.stderr}")
    return proc


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tzero: "), f"expected one tzero: line, got {stderr!r}"
    return lines[0]


def session_phase(control: str) -> str | None:
    c = RawControl(control)
    try:
        c.rq("hello", version=1)
        session = c.rq("status").get("session")
        return session["phase"] if session else None
    finally:
        c.close()


@contextlib.contextmanager
def held(proc: subprocess.Popen | int):
    """SIGSTOP the process (a store, a controller) for the block, SIGCONT after."""
    pid = proc if isinstance(proc, int) else proc.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


class Load:
    """Exports a and c on subsystem s1, b on s2 (stream order a, c, b), dependent writers on all."""

    NAMES = ["a", "c", "b"]

    def __init__(self, workdir, serve, size: int = SIZE):
        self.paths = {n: os.path.join(str(workdir), f"{n}.img") for n in self.NAMES}
        self.initial = [make_image(self.paths[n], size, seed=i) for i, n in enumerate(self.NAMES)]
        self.s1 = serve("s1", {"a": self.paths["a"], "c": self.paths["c"]}, "--chunk", "64K")
        self.s2 = serve("s2", {"b": self.paths["b"]}, "--chunk", "64K")
        targets = [(self.s1.socket, "a"), (self.s1.socket, "c"), (self.s2.socket, "b")]
        self.writers = [DependentWriter(i, WRITERS, targets, [size] * 3, seed=300 + i) for i in range(WRITERS)]
        for w in self.writers:
            w.start()
        wait_for(lambda: all(len(w.log) >= 10 for w in self.writers), 30, "writers to get going")

    def writes(self) -> int:
        return sum(len(w.log) for w in self.writers)

    def backup_args(self, output: str, *extra) -> list[str]:
        return ["backup", "-s", self.s1.control, "-s", self.s2.control, "-o", output, "--json", "--no-progress",
                "--host-memory", "8M", "--part-size", "5M", *extra]

    def let_writers_write(self, n: int = HELD_WRITES) -> None:
        target = self.writes() + n
        wait_for(lambda: self.writes() >= target, 60, f"{n} more writes")

    def stop(self) -> None:
        for w in self.writers:
            w.stop.set()
        for w in self.writers:
            w.join(30)
            assert w.error is None, f"{w.name} failed: {w.error!r}"

    def problems(self, restored_dir, summary: dict) -> list[str]:
        assert summary["datasets"] == self.NAMES
        restored = []
        for n in self.NAMES:
            with open(os.path.join(str(restored_dir), f"{n}.img"), "rb") as f:
                restored.append(f.read())
        tz = datetime.datetime.fromisoformat(summary["time_zero"]).timestamp()
        problems, cuts = time_zero_problems(self.writers, self.initial, restored, tz)
        if not all(0 < k < len(w.log) for k, w in zip(cuts, self.writers, strict=True)):
            problems.append(f"time zero did not fall mid-run for every writer: {cuts}")
        return problems


def marker_of_upload(store, bucket: str) -> bool:
    """True once a backup's upload exists and is marked: its last store request before it freezes."""
    from controller.backup.s3uploads import MARKER_PREFIX

    return bool(store.uploads(bucket)) and bool(store.keys(bucket, MARKER_PREFIX))


def hold_store_mid_copy(store, bucket: str, load: Load, backup: subprocess.Popen) -> None:
    """Once BACKUP has started its upload, hold the store: the copy stalls after a few parts'
    worth of reads, while the session goes active and the writers write into chunks not yet
    copied; then let the store go."""
    wait_for(lambda: marker_of_upload(store, bucket) or backup.poll() is not None, 60, "the upload to start")
    assert backup.poll() is None, backup.stderr.read() if backup.stderr else ""
    with held(store.proc):
        wait_for(lambda: session_phase(load.s1.control) == "active", 60, "the session to go active")
        load.let_writers_write()
        time.sleep(0)  # the writers' writes are done and acknowledged; nothing to wait for
