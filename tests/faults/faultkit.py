"""The fault suite's plumbing: each case keeps a ledger, and the suite adds them up.

What every case proves, and counts (the suite prints the totals at its end):
  - application writes: stamped dependent writers (testkit/workload.py) run against the
    live exports through the fault; every write they issued must have been acknowledged
    (`writes failed`), and every acknowledged byte must be on the disk afterwards, read
    from the image itself (`bytes lost`);
  - backups: every `tzero backup` that exited 0 is verified and restored, and the restore
    must be exactly the disks at its time zero for every writer (`inexact backups`);
  - commands: every tzero command's output, and every subsystem's log, must be free of
    Python tracebacks (`tracebacks`): failures are one line.
"""

import dataclasses
import datetime
import json
import os
import re
import subprocess
import types
from collections.abc import Sequence

from testkit.workload import BLOCK, DependentWriter, time_zero_problems

from helpers import REPO, TZERO, Subsystem, make_image, wait_for

TRACEBACK = re.compile(r"Traceback \(most recent call last\)|^Exception ignored in", re.MULTILINE)


@dataclasses.dataclass
class Tally:
    cases: int = 0
    commands: int = 0
    control_requests: int = 0  # sent to control sockets by the fuzzing, each answered
    application_writes: int = 0
    application_writes_failed: int = 0
    bytes_lost: int = 0
    backups_exited_0: int = 0
    backups_exited_0_inexact: int = 0
    tracebacks: int = 0

    def add(self, other: "Tally") -> None:
        for f in dataclasses.fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def line(self) -> str:
        return (f"fault matrix: {self.cases} cases, {self.commands} commands, {self.control_requests} fuzzed "
                f"control requests; {self.application_writes} "
                f"application writes, {self.application_writes_failed} failed, {self.bytes_lost} bytes lost; "
                f"{self.backups_exited_0} backups exited 0, {self.backups_exited_0_inexact} inexact; "
                f"{self.tracebacks} tracebacks")


SUITE = Tally()  # what every finished case added


def one_line(stderr: str) -> str:
    """The one line a failing command says; fails unless that is all it said on stderr."""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tzero: "), f"expected one tzero: line, got {stderr!r}"
    return lines[0]


class Load:
    """Dependent writers on exports (TARGETS: [(subsystem socket, export)]) whose images are
    PATHS, started at once; `stop` joins them and checks their writes."""

    def __init__(self, targets: list[tuple[str, str]], paths: Sequence[str | os.PathLike[str]], initial: list[bytes],
                 writers: int = 2, seed: int = 0):
        self.paths = [str(p) for p in paths]
        self.names = [export for _, export in targets]
        self.initial = initial
        sizes = [len(b) for b in initial]
        self.writers = [DependentWriter(i, writers, targets, sizes, seed=seed + i) for i in range(writers)]
        for w in self.writers:
            w.start()
        wait_for(lambda: all(len(w.log) >= 5 for w in self.writers), 30, "writers to get going")

    def writes(self) -> int:
        return sum(len(w.log) for w in self.writers)

    def restricted_to(self, names: list[str]) -> tuple[list, list[bytes]]:
        """The writers as seen by a backup of the exports NAMES (whole exports, in that order):
        each writer's log cut to those targets, renumbered; and their initial images."""
        index = {self.names.index(n): i for i, n in enumerate(names)}
        writers = [types.SimpleNamespace(name=w.name, log=[(index[t], *rest) for t, *rest in w.log if t in index])
                   for w in self.writers]
        return writers, [self.initial[self.names.index(n)] for n in names]

    def wait_writes(self, more: int, timeout: float = 30) -> None:
        """Until the writers landed MORE writes than now (what they see goes on)."""
        target = self.writes() + more
        wait_for(lambda: self.writes() >= target, timeout, f"{more} more application writes")

    def stop(self) -> None:
        for w in self.writers:
            w.stop.set()
        for w in self.writers:
            w.join(60)
            assert not w.is_alive(), f"{w.name} is stuck"

    def final_images(self) -> list[bytes]:
        out = []
        for p in self.paths:
            with open(p, "rb") as f:
                out.append(f.read())
        return out


class Case:
    """One fault case: runs tzero and subsystems, keeps the ledger, checks the promises."""

    def __init__(self, workdir, name: str):
        self.dir = workdir
        self.name = name
        self.tally = Tally(cases=1)
        self.subsystems: list[Subsystem] = []
        self.loads: list[Load] = []
        self.pending: list[tuple[str, dict, Load | None, list[bytes] | None]] = []  # exit-0 backups to check
        self.finished = False

    # --- commands ---------------------------------------------------------------------

    def note(self, *texts: str | bytes | None) -> None:
        """Count the tracebacks in a command's output."""
        for t in texts:
            text = t.decode(errors="replace") if isinstance(t, bytes) else t
            if text:
                self.tally.tracebacks += len(TRACEBACK.findall(text))

    def tzero(self, *args, timeout: float = 120, **kw) -> subprocess.CompletedProcess:
        proc = subprocess.run([*TZERO, *map(str, args)], capture_output=True, text=True, timeout=timeout, cwd=REPO,
                              **kw)
        self.tally.commands += 1
        self.note(proc.stdout, proc.stderr)
        return proc

    def spawn(self, *args, **kw) -> subprocess.Popen:
        """tzero in the background; end it with `ended`."""
        kw.setdefault("stdout", subprocess.PIPE)
        kw.setdefault("stderr", subprocess.PIPE)
        self.tally.commands += 1
        return subprocess.Popen([*TZERO, *map(str, args)], cwd=REPO, **kw)

    def ended(self, proc: subprocess.Popen, timeout: float = 120) -> tuple[int, str, str]:
        """Wait for PROC; (status, stdout, stderr), tracebacks counted."""
        out, err = proc.communicate(timeout=timeout)
        out = out.decode(errors="replace") if isinstance(out, bytes) else (out or "")
        err = err.decode(errors="replace") if isinstance(err, bytes) else (err or "")
        self.note(out, err)
        return proc.returncode, out, err

    # --- subsystems and workloads -----------------------------------------------------

    def images(self, names: Sequence[str], size: int, seed: int = 0) -> tuple[list[str], list[bytes]]:
        paths = [str(self.dir / f"{n}.img") for n in names]
        return paths, [make_image(p, size, seed=seed + i) for i, p in enumerate(paths)]

    def serve(self, name: str, exports: dict, *options) -> Subsystem:
        sub = Subsystem(self.dir, name, exports, *options)
        self.subsystems.append(sub)
        return sub

    def load(self, targets: list[tuple[str, str]], paths, initial: list[bytes], writers: int = 2) -> Load:
        load = Load(targets, paths, initial, writers, seed=len(self.loads) * 10)
        self.loads.append(load)
        return load

    # --- backups ----------------------------------------------------------------------

    def backup(self, out, *args, load: Load | None = None, images: list[bytes] | None = None,
               timeout: float = 120) -> subprocess.CompletedProcess:
        """`tzero backup -o OUT ARGS --json`; if it exits 0 it is checked at finish() against
        LOAD's writers (or against IMAGES, the disks' content when nothing writes)."""
        proc = self.tzero("backup", "-o", out, "--json", "--no-progress", *args, timeout=timeout)
        if proc.returncode == 0:
            self.exited_0(str(out), json.loads(proc.stdout.strip().splitlines()[-1]), load, images)
        return proc

    def exited_0(self, out: str, summary: dict, load: Load | None, images: list[bytes] | None) -> None:
        """A backup that exited 0 (however it was run): finish() proves it restores exactly."""
        assert load is not None or images is not None, "an exit-0 backup is checked against something"
        self.pending.append((out, summary, load, images))

    def _check_backup(self, out: str, summary: dict, load: Load | None, images: list[bytes] | None) -> None:
        self.tally.backups_exited_0 += 1
        verified = self.tzero("verify", out)
        restored_dir = self.dir / f"restored-{len(os.listdir(self.dir))}"
        restored = self.tzero("restore", out, "--to", restored_dir)
        problems = []
        if verified.returncode or restored.returncode:
            problems.append(f"verify {verified.returncode} {verified.stderr.strip()}; "
                            f"restore {restored.returncode} {restored.stderr.strip()}")
        else:
            got = []
            for name in summary["datasets"]:
                with open(restored_dir / f"{name}.img", "rb") as f:
                    got.append(f.read())
            if load is not None:
                tz = datetime.datetime.fromisoformat(summary["time_zero"]).timestamp()
                writers, initial = load.restricted_to(summary["datasets"])
                problems = time_zero_problems(writers, initial, got, tz)[0]
            elif got != images:
                problems = ["the restore differs from the disks"]
        if problems:
            self.tally.backups_exited_0_inexact += 1
        assert not problems, f"a backup that exited 0 is not its time zero: {problems}"

    # --- the end of a case ------------------------------------------------------------

    def finish(self) -> None:
        """Stop the writers, check that none of their writes failed and no acknowledged byte
        was lost, then that every backup that exited 0 restores exactly."""
        for load in self.loads:
            load.stop()
        for load in self.loads:
            self._check_writes(load)
        for pending in self.pending:
            self._check_backup(*pending)
        self.finished = True

    def _check_writes(self, load: Load) -> None:
        final = load.final_images()
        failed = 0
        for w in load.writers:
            self.tally.application_writes += len(w.log)
            if w.error is not None:
                failed += 1
        lost = 0
        last: dict[tuple[int, int], bytes] = {}
        for w in load.writers:
            for t, off, data, *_ in w.log:
                last[(t, off)] = data
        for (t, off), data in last.items():
            got = final[t][off:off + BLOCK]
            if got != data:
                lost += sum(a != b for a, b in zip(got, data, strict=True))
        self.tally.application_writes_failed += failed
        self.tally.bytes_lost += lost
        errors = [f"{w.name}: {w.error!r}" for w in load.writers if w.error is not None]
        assert not errors, f"application writes failed: {errors}"
        assert lost == 0, f"{lost} acknowledged bytes are not on the disk"

    def defects(self) -> int:
        t = self.tally
        return t.application_writes_failed + t.bytes_lost + t.backups_exited_0_inexact + t.tracebacks

    def close(self) -> None:
        for sub in self.subsystems:
            sub.stop()
            self.note(sub.output())
        for load in self.loads:
            load.stop()


def tzero_main_in_process(argv: list[str], capsys) -> tuple[int, str, str]:
    """`tzero ARGV` in this process (hundreds run in seconds): (status, stdout, stderr). An
    exception escaping main() is a failure of the test, as a traceback would be."""
    from controller.cli.main import main
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def unavailable(reason: str) -> None:
    """Skip a case this host cannot stage; in CI (TZERO_REQUIRE_VM=1, root, every package the
    Makefile installs) that is a failure instead: the matrix must run whole there."""
    import pytest
    if os.environ.get("TZERO_REQUIRE_VM") == "1":
        pytest.fail(f"{reason} (TZERO_REQUIRE_VM=1: the fault matrix must run whole)")
    pytest.skip(reason)


def tiny_tmpfs(path, size: str) -> bool:
    """Mount a SIZE tmpfs at PATH (needs root); False if this host will not."""
    os.makedirs(path, exist_ok=True)
    if os.geteuid() != 0:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)]).returncode == 0


def unmount(path) -> None:
    subprocess.run(["umount", "-l", str(path)], check=False)


def wait_ended_session(sub: Subsystem, timeout: float = 30) -> dict:
    return wait_for(lambda: (sub.status()["session"] is None and sub.status()["last_session"]), timeout,
                    "the session to end")

