"""`make demo`: a real backup of live disks, and proof that the restore is time zero.

Two storage subsystems serve one image each; two dependent writers keep writing
across both while `tzero backup` runs; the backup is verified and restored, and
the restore is checked against the writers' logs: for every writer it must hold
exactly the writes that came before time zero, and nothing else may differ.
"""

import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import TYPE_CHECKING

from testkit.local_subsystem import LocalSubsystem
from testkit.workload import DependentWriter, make_image, time_zero_problems

if TYPE_CHECKING:
    from controller.cli.backup import Summary

SIZE = 64 << 20
WRITERS = 2


def tzero(*args: object) -> str:
    proc = subprocess.run([sys.executable, "-m", "controller", *map(str, args)], stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"demo: tzero {args[0]} failed (exit {proc.returncode})")
    return proc.stdout


def say(text: str) -> None:
    print(f"demo: {text}", flush=True)


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="tzero-demo-") as tmp:
        names = ["disk1", "disk2"]
        paths = [os.path.join(tmp, f"{n}.img") for n in names]
        initial = [make_image(p, SIZE, seed=i) for i, p in enumerate(paths)]
        say(f"two subsystems, each serving a {SIZE >> 20} MiB image, in {tmp}")
        writers, backup, summary = backup_while_writing(tmp, names, paths)
        for w in writers:
            if w.error:
                raise SystemExit(f"demo: {w.name} failed: {w.error}")
        say(f"time zero {summary['time_zero']}: writes held {summary['pause_ms']:.2f} ms, "
            f"{summary['chunks_cow']} chunks saved by copy-before-write, {summary['bytes']} bytes "
            f"in {summary['elapsed_s']} s")
        print(tzero("verify", backup).strip())
        return check_restore(tmp, names, backup, summary, writers, initial)


def backup_while_writing(tmp: str, names: list[str], paths: list[str]) -> tuple[list[DependentWriter], str, "Summary"]:
    """Serve PATHS as NAMES, one subsystem each, and take a backup while the writers write to both.
    Returns the writers (stopped), the backup's path and its summary; the subsystems are stopped."""
    log = open(os.path.join(tmp, "subsystems.log"), "w")
    subsystems = [LocalSubsystem(tmp, f"sub{i + 1}", {n: p}, log=log)
                  for i, (n, p) in enumerate(zip(names, paths, strict=True))]
    writers: list[DependentWriter] = []
    try:
        targets = [(s.socket, n) for s, n in zip(subsystems, names, strict=False)]
        writers = [DependentWriter(i, WRITERS, targets, [SIZE, SIZE], seed=i) for i in range(WRITERS)]
        for w in writers:
            w.start()
        time.sleep(0.5)
        say(f"{WRITERS} writers are writing to both disks; taking the backup")
        backup = os.path.join(tmp, "backup.tzb")
        summary: Summary = json.loads(tzero("backup", *[a for s in subsystems for a in ("-s", s.control)],
                                            "-o", backup, "--json").strip().splitlines()[-1])
        time.sleep(0.2)
    finally:
        for w in writers:
            w.stop.set()
        for w in writers:
            w.join()
        for s in subsystems:
            s.stop()
        log.close()
    return writers, backup, summary


def check_restore(tmp: str, names: list[str], backup: str, summary: "Summary", writers: list[DependentWriter],
                  initial: list[bytes]) -> int:
    """Restore BACKUP and check it against the writers' logs: 0 if it is both disks at time zero."""
    restored_dir = os.path.join(tmp, "restored")
    tzero("restore", backup, "--to", restored_dir)
    restored = []
    for n in names:
        with open(os.path.join(restored_dir, f"{n}.img"), "rb") as f:
            restored.append(f.read())
    tz = datetime.datetime.fromisoformat(summary["time_zero"]).timestamp()
    problems, cuts = time_zero_problems(writers, initial, restored, tz)
    if problems:
        for p in problems:
            say(f"MISMATCH: {p}")
        return 1
    kept = ", ".join(f"{w.name} {k} of {len(w.log)} writes" for w, k in zip(writers, cuts, strict=False))
    say(f"the restore equals both disks at time zero ({kept}; every other block unchanged)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
