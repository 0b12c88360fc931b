"""Pause and the application's view of a whole backup: tzero vs qemu-storage-daemon.

Dependent writers (bench/writer.py, one process each, 4 KiB writes) keep writing to
every disk while full backups are taken, one after another, by each system in turn
over the same image files: rounds go tzero, QSD (default), QSD (max-workers=1),
tzero, ... so that whatever else loads the machine hits all of them alike.

For every backup:
- pause: tzero's gate figure (the longest any export held writes) or, for QSD, the
  round trip of its QMP `transaction` (it drains every disk inside it);
- app stall: the longest write in flight at any moment writes could have been held
  (tzero: [time zero - pause, time zero + pause], which covers every gate's closed
  interval; QSD: from sending the transaction to its reply);
- through the copy: writes per second relative to the quiet stretch before, p99 and
  max write latency, and how long the copy took.

Two shapes: 2 subsystems x 1 export x 256 MiB (QSD: one daemon, 2 exports), and
2 subsystems x 4 exports x 64 MiB (8 exports). A plot sample (the write latencies
of one backup per system) goes to results/timeline.json for bench/report.py.
"""

import datetime
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import (  # noqa: E402
    MiB,
    Stopper,
    Writers,
    backup,
    image,
    latencies_ms,
    percentile,
    say,
    serve,
    stall_ms,
    workdir,
    write_result,
)
from bench.qsd import StorageDaemon  # noqa: E402

WRITERS = 4
QUIET_S = 0.6  # before every backup: the writers' normal rate and latency
SYSTEMS = ("tzero", "qsd-default", "qsd-mw1")


class TzeroSide:
    def __init__(self, stopper, layout: dict):
        """LAYOUT: {subsystem: {export: path}}."""
        self.subs = [stopper.add(serve(f"ses-{s}", exports)) for s, exports in layout.items()]
        self.uris = [sub.uri(n) for sub, exports in zip(self.subs, layout.values(), strict=False) for n in exports]

    def take(self) -> dict:
        s = backup([sub.control for sub in self.subs])
        tz = datetime.datetime.fromisoformat(s["time_zero"]).timestamp()
        p = s["pause_ms"] / 1000
        return {"pause_ms": s["pause_ms"], "window": (tz - p, tz + p), "zero": tz, "end": time.time(),
                "copy_s": s["elapsed_s"], "chunks_cow": s["chunks_cow"]}


class QsdSide:
    def __init__(self, daemon: StorageDaemon, max_workers):
        self.daemon = daemon
        self.max_workers = max_workers
        self.names = list(daemon.exports)
        self.uris = [daemon.uri(n) for n in self.names]

    def take(self) -> dict:
        r = self.daemon.start_backup(self.names, self.max_workers)
        end = self.daemon.wait_backup(self.names)
        return {"pause_ms": r["pause_ms"], "window": (r["sent"], r["replied"]), "zero": r["sent"],
                "end": max(end, r["replied"]), "copy_s": end - r["sent"]}


def one_round(side, sessions: int, tag: str) -> tuple[list[dict], list]:
    writers = Writers(side.uris, WRITERS, tag)
    runs = []
    try:
        for _ in range(sessions):
            time.sleep(QUIET_S)
            quiet = (time.time() - QUIET_S, time.time())
            r = side.take()
            r["quiet"] = quiet
            runs.append(r)
    finally:
        logs = writers.stop()
    for r in runs:
        t0, t1 = r["window"]
        r["app_stall_ms"] = stall_ms(logs, t0, t1)
        base = latencies_ms(logs, *r["quiet"])
        copy = latencies_ms(logs, t1, r["end"])
        r["quiet_writes_s"] = len(base) / QUIET_S
        r["copy_writes_s"] = len(copy) / max(r["end"] - t1, 1e-3)
        r["copy_write_rate"] = r["copy_writes_s"] / max(r["quiet_writes_s"], 1e-9)
        r["copy_p99_ms"] = percentile(copy, 99)
        r["copy_max_ms"] = stall_ms(logs, t1, r["end"])
        r["quiet_p99_ms"] = percentile(base, 99)
    return runs, logs


def summarise(runs: list[dict]) -> dict:
    pick = lambda k: [r[k] for r in runs]  # noqa: E731
    return {
        "sessions": len(runs),
        "pause_ms_max": max(pick("pause_ms")), "pause_ms_p99": percentile(pick("pause_ms"), 99),
        "app_stall_ms_max": max(pick("app_stall_ms")), "app_stall_ms_p99": percentile(pick("app_stall_ms"), 99),
        "copy_s_mean": sum(pick("copy_s")) / len(runs),
        "copy_write_rate_mean": sum(pick("copy_write_rate")) / len(runs),
        "copy_p99_ms_max": max(pick("copy_p99_ms")), "copy_max_ms_max": max(pick("copy_max_ms")),
        "quiet_p99_ms_max": max(pick("quiet_p99_ms")),
        "runs": [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()
                  if k not in ("window", "quiet", "zero", "end")} for r in runs],
    }


def sample(logs, r: dict, before: float = 0.5, after: float = 0.3) -> dict:
    """One backup's write latencies for the plot: (seconds from time zero, ms), thinned where dull."""
    lo, hi, zero = r["window"][0] - before, r["end"] + after, r["zero"]
    points, k = [], 0
    for log in logs:
        for s, a in log:
            if lo <= s <= hi:
                lat = (a - s) * 1000
                k += 1
                if lat >= 1.0 or k % 8 == 0:  # every slow write, one in eight of the rest
                    points.append((round(s - zero, 5), round(lat, 3)))
    points.sort()
    return {"copy_end_s": r["end"] - zero, "pause_ms": r["pause_ms"], "points": points}


def compare(shape: str, layout: dict, sessions: int, stopper) -> tuple[dict, dict]:
    tz = TzeroSide(stopper, layout)
    flat = {n: p for exports in layout.values() for n, p in exports.items()}
    daemon = stopper.add(StorageDaemon(workdir("run"), f"qsd-{shape}", flat, log=open(os.devnull, "w")))
    sides = {"tzero": tz, "qsd-default": QsdSide(daemon, None), "qsd-mw1": QsdSide(daemon, 1)}
    runs = {k: [] for k in SYSTEMS}
    samples = {}
    per_round = (sessions + 1) // 2
    for rnd in range(2):
        for name in SYSTEMS:
            say(f"{shape}: {name}, round {rnd + 1}, {per_round} backups under {WRITERS} writers")
            got, logs = one_round(sides[name], per_round, f"{shape}-{name}")
            runs[name] += got
            if rnd == 1:
                samples[name] = sample(logs, got[0])
    result = {name: summarise(runs[name]) for name in SYSTEMS}
    result["order"] = "rounds interleaved: " + ", ".join(SYSTEMS) + ", then again"
    return result, samples


def main() -> int:
    two = {f"p{i}": {f"p{i}": image(f"p{i}", 256 * MiB, seed=i)} for i in (1, 2)}
    eight = {f"e{s}": {f"e{s}x{k}": image(f"e{s}x{k}", 64 * MiB, seed=20 + 4 * s + k) for k in range(4)}
             for s in (1, 2)}
    out = {"bench": "sessions", "writers": WRITERS, "note": __doc__.split("\n\n")[1]}
    with Stopper() as stopper:
        out["two_exports"], samples = compare("two", two, 10, stopper)
        out["two_exports"]["shape"] = "2 subsystems x 1 export x 256 MiB; QSD: one daemon, 2 exports"
        stopper.__exit__()
        out["eight_exports"], _ = compare("eight", eight, 10, stopper)
        out["eight_exports"]["shape"] = "2 subsystems x 4 exports x 64 MiB; QSD: one daemon, 8 exports"
    write_result("sessions", out)
    write_result("timeline", {"bench": "timeline", "shape": out["two_exports"]["shape"], "systems": samples})
    for shape in ("two_exports", "eight_exports"):
        for name in SYSTEMS:
            r = out[shape][name]
            say(f"{shape} {name}: pause max {r['pause_ms_max']:.2f} p99 {r['pause_ms_p99']:.2f} ms; app stall max "
                f"{r['app_stall_ms_max']:.2f} ms; copy {r['copy_s_mean']:.2f} s at {r['copy_write_rate_mean']:.2f} "
                f"of quiet write rate, max write {r['copy_max_ms_max']:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
