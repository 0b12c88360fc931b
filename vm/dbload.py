"""A SQLite workload for the crash-consistency tests, and the checks of a restored copy.

Stdlib only: guests run it with the host's /usr/bin/python3 (Debian's, with sqlite3), and
the host tests import its analysis functions.

    python3 vm/dbload.py run --db FS/db.sqlite --log /run/job/commits.log --stop /tmp/stop \\
        [--ready-file /tmp/ready --ready-after 50] [--clock /run/job/clock.json]
    python3 vm/dbload.py check --db RESTORED/db.sqlite      # prints one JSON object

The database runs in WAL mode with synchronous=FULL: the WAL is synced at every commit, so
every acknowledged commit is durable, and a crash-consistent copy holds all of them. One
writer, one transaction at a time: transaction n bumps the counter to n and inserts row n,
whose payload is derived from n. Commit n+1 begins only after commit n was acknowledged.

The log gets one line per acknowledged commit, "n begin end": the guest's wall clock
(epoch seconds) just before BEGIN and just after COMMIT returned. It is appended to as the
workload runs, so on the job share the host sees it grow.

A copy of the filesystem taken at time zero T must hold a counter c with lo <= c <= hi:
lo the last commit acknowledged before T (durable, so in the copy), hi the first one
acknowledged after T (commit hi+1 began after T, so it cannot be in the copy).

Clocks: a guest's wall clock starts from the RTC, whole seconds off the host's. With
--clock FILE (a file on the job share), the workload measures host-minus-guest at start
and at stop: it writes a probe file next to FILE and reads back its mtime, which the
host's filesystem stamped with the host's clock, between two guest clock readings. Linux
stamps a file's times from a coarse clock (a tick behind, 4 ms here) unless they were read
since the last change (multigrain timestamps, Linux 6.13): so the first probe, on a new
file, is thrown away, and each later one follows a stat of the same file.
"""

import argparse
import hashlib
import json
import math
import os
import sqlite3
import sys
import time
from typing import NamedTuple

PAYLOAD_BYTES = 2048
PROBES = 7


def payload(n: int) -> bytes:
    """Row n's payload: PAYLOAD_BYTES derived from n, so a check can recompute it."""
    seed = hashlib.blake2b(n.to_bytes(8, "little"), digest_size=64).digest()
    return seed * (PAYLOAD_BYTES // len(seed))


class Commit(NamedTuple):
    n: int
    begin: float
    end: float

    @property
    def latency(self) -> float:
        return self.end - self.begin


# --- in the guest ----------------------------------------------------------------------


def open_db(path: str) -> sqlite3.Connection:
    con = sqlite3.connect(path, isolation_level=None)  # explicit BEGIN/COMMIT
    mode = con.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    assert mode == "wal", f"journal_mode is {mode}: the durability rule needs WAL"
    con.execute("PRAGMA synchronous=FULL")
    con.execute("CREATE TABLE IF NOT EXISTS counter (id INTEGER PRIMARY KEY, n INTEGER NOT NULL)")
    con.execute("CREATE TABLE IF NOT EXISTS rows (n INTEGER PRIMARY KEY, payload BLOB NOT NULL)")
    con.execute("INSERT OR IGNORE INTO counter VALUES (1, 0)")
    return con


def bump(con: sqlite3.Connection) -> int:
    """One transaction: counter n-1 -> n, row n; returns n once the commit is acknowledged."""
    con.execute("BEGIN IMMEDIATE")
    (n,) = con.execute("UPDATE counter SET n = n + 1 WHERE id = 1 RETURNING n").fetchone()
    con.execute("INSERT INTO rows VALUES (?, ?)", (n, payload(n)))
    con.execute("COMMIT")
    return n


def clock_offset(probe: str) -> dict:
    """Host-minus-guest wall clock, from the mtime the host stamps on PROBE (see above)."""
    best = None
    for i in range(PROBES + 1):
        before = time.time()
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            # Linux stamps a file with its fine-grained clock only if the last stamp was
            # looked at since it was made (multigrain timestamps); the truncate stamped it.
            os.fstat(fd)
            os.write(fd, b"probe\n")
        finally:
            os.close(fd)
        host = os.stat(probe).st_mtime_ns / 1e9
        after = time.time()
        if i == 0:
            continue  # a new file's first mtime may come from the coarse clock (see above)
        if best is None or after - before < best["rtt"]:
            best = {"offset": host - (before + after) / 2, "rtt": after - before, "guest": after}
    os.unlink(probe)
    return best


def run(args) -> int:
    con = open_db(args.db)
    probe = os.path.join(os.path.dirname(os.path.abspath(args.clock)), ".clock-probe") if args.clock else None
    clock = {"start": clock_offset(probe)} if probe else {}
    started = time.monotonic()
    log = os.open(args.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    n = 0
    try:
        while not os.path.exists(args.stop):
            if time.monotonic() - started > args.max_seconds:
                print(f"dbload: stopped after --max-seconds {args.max_seconds}", file=sys.stderr)
                break
            begin = time.time()
            n = bump(con)
            end = time.time()
            os.write(log, f"{n} {begin:.6f} {end:.6f}\n".encode())
            if args.ready_file and n == args.ready_after:
                open(args.ready_file, "w").close()
    finally:
        os.close(log)
        con.close()
    if probe:
        clock["end"] = clock_offset(probe)
        with open(args.clock, "w") as f:
            json.dump(clock, f)
    print(f"dbload: {n} commits")
    return 0


def check(path: str) -> dict:
    """Open the database at PATH (its folder must be writable: SQLite replays the WAL) and
    say whether it is whole: integrity_check, the counter, and rows 1..counter each with
    its own payload."""
    con = sqlite3.connect(path, isolation_level=None)
    try:
        integrity = "; ".join(r[0] for r in con.execute("PRAGMA integrity_check"))
        (counter,) = con.execute("SELECT n FROM counter WHERE id = 1").fetchone()
        rows = bad = 0
        expected = 1
        for n, data in con.execute("SELECT n, payload FROM rows ORDER BY n"):
            rows += 1
            if n != expected or data != payload(n):
                bad += 1
            expected = n + 1
        mode = con.execute("PRAGMA journal_mode").fetchone()[0]
    finally:
        con.close()
    return {"integrity": integrity, "counter": counter, "rows": rows, "bad_rows": bad,
            "journal_mode": mode}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="dbload", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="commit transactions until --stop exists")
    r.add_argument("--db", required=True)
    r.add_argument("--log", required=True, help="one line per commit: n begin end")
    r.add_argument("--stop", required=True, help="stop once this file exists")
    r.add_argument("--ready-file", help="created once --ready-after commits are acknowledged")
    r.add_argument("--ready-after", type=int, default=20)
    r.add_argument("--clock", help="measure host-minus-guest clock into this JSON file")
    r.add_argument("--max-seconds", type=float, default=600.0)
    c = sub.add_parser("check", help="print one JSON object: integrity, counter, rows")
    c.add_argument("--db", required=True)
    args = p.parse_args(argv)
    if args.command == "run":
        return run(args)
    print(json.dumps(check(args.db)))
    return 0


# --- on the host: reading the results ------------------------------------------------


def read_commits(path) -> list[Commit]:
    """The commit log; a torn last line (the guest stopped mid-append) is left out."""
    commits = []
    with open(path) as f:
        for line in f:
            words = line.split()
            if len(words) == 3 and line.endswith("\n"):
                commits.append(Commit(int(words[0]), float(words[1]), float(words[2])))
    for prev, cur in zip(commits, commits[1:], strict=False):
        assert cur.n == prev.n + 1 and cur.begin >= prev.end, f"log out of order at {cur}"
    return commits


def host_minus_guest(clock: dict) -> tuple[float, float]:
    """(offset, slack) from a --clock file: guest time = host time - offset, give or take
    slack. The offset is the measurement with the shorter round trip (a busy guest may take
    tens of ms for one); slack is half that round trip plus the difference between the two
    measurements, which bounds the drift over the run."""
    start, end = clock["start"], clock["end"]
    best = min(start, end, key=lambda m: m["rtt"])
    return best["offset"], best["rtt"] / 2 + abs(end["offset"] - start["offset"])


def counter_bounds(commits: list[Commit], t0: float, slack: float = 0.0) -> tuple[int, int | None]:
    """(lo, hi) for a copy taken at T0: lo the last commit surely acknowledged before T0,
    hi the first surely acknowledged after it (None if the log ends first); SLACK widens
    "surely" for an uncertain clock."""
    lo = max((c.n for c in commits if c.end < t0 - slack), default=0)
    hi = min((c.n for c in commits if c.end > t0 + slack), default=None)
    return lo, hi


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(math.ceil(q * len(ordered)) - 1, 0)]


def stall_figures(commits: list[Commit], t0: float, baseline_before: float, window: float = 1.0) -> dict:
    """The longest commit latency among transactions overlapping [T0-WINDOW, T0+WINDOW]
    against the latencies of transactions acknowledged before BASELINE_BEFORE (the backup's
    start): the write stall the application saw around time zero, and its normal. Also the
    latency of the commit in flight at T0 itself (None if T0 fell between two)."""
    around = [c for c in commits if c.end >= t0 - window and c.begin <= t0 + window]
    baseline = [c.latency for c in commits if c.end < baseline_before]
    worst = max(around, key=lambda c: c.latency)
    spanning = [c.latency for c in commits if c.begin <= t0 <= c.end]
    return {"at_t0_ms": round(spanning[0] * 1e3, 2) if spanning else None,
            "around_max_ms": round(worst.latency * 1e3, 2),
            "around_max_begins_ms_after_t0": round((worst.begin - t0) * 1e3, 2),
            "around_commits": len(around),
            "baseline_p50_ms": round(percentile(baseline, 0.50) * 1e3, 2),
            "baseline_p99_ms": round(percentile(baseline, 0.99) * 1e3, 2),
            "baseline_max_ms": round(max(baseline) * 1e3, 2),
            "baseline_commits": len(baseline)}


if __name__ == "__main__":
    sys.exit(main())
