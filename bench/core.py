"""The core engine's three figures, in one run; prints JSON and writes bench/results/core.json.

 (a) pause: 2 subsystems x 4 dependent writers (4 KiB writes, each writer in its own
     process writing to both subsystems); 10 `tzero backup` sessions. For each, the
     plugin's gate figure (pause_ms, the longest any export held writes) and the
     application's: the longest write in flight while the gates could have been closed.
 (b) backup speed: `tzero backup` of an idle 1 GiB export vs `nbdcopy URI null:` reading
     the same live export, interleaved (ours, nbdcopy, ours, nbdcopy, ...).
 (c) write cost: fio (nbd engine, 4k randwrite, iodepth 16) IOPS on the live 1 GiB export
     with no session vs during a session held open through the control protocol (every
     first touch of a chunk costs a copy-before-write), interleaved.

    python bench/core.py [--sessions N] [--rounds N] [--fio-seconds S]
"""

import argparse
import datetime
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import (MiB, Stopper, Writers, backup, fio, image, latencies_ms, machine,  # noqa: E402
                          nbdcopy_null, need, percentile, say, serve, stall_ms, workdir, write_result)
from controller.session import ConsistencyGroup  # noqa: E402

WRITERS = 4
PAUSE_EXPORT = 256 * MiB
SPEED_EXPORT = 1024 * MiB


def pause(sessions: int, stopper: Stopper, folder: str) -> dict:
    paths = [image(os.path.join(folder, f"p{i}.img"), PAUSE_EXPORT, seed=i) for i in (1, 2)]
    subs = [stopper.add(serve(f"p{i}", {f"p{i}": p})) for i, p in zip((1, 2), paths)]
    uris = [s.uri(f"p{i}") for i, s in zip((1, 2), subs)]
    writers = Writers(uris, WRITERS, "pause")
    runs = []
    try:
        time.sleep(2.0)  # a quiet stretch: the writers' normal latency
        quiet_end = time.time()
        for _ in range(sessions):
            s = backup([sub.control for sub in subs])
            s["time_zero_epoch"] = datetime.datetime.fromisoformat(s["time_zero"]).timestamp()
            s["ended_epoch"] = time.time()
            runs.append(s)
            time.sleep(0.3)
    finally:
        logs = writers.stop()
    for s in runs:
        tz, wall = s["time_zero_epoch"], s["pause_wall_ms"] / 1000
        # The gates closed after the freeze was sent and opened before the thaw reply, and
        # time zero lies between: [tz - wall, tz + wall] covers every moment they were closed.
        s["app_stall_ms"] = stall_ms(logs, tz - wall, tz + wall)
        copy = latencies_ms(logs, tz + wall, s["ended_epoch"])
        s["app_copy_p99_ms"] = percentile(copy, 99)
        s["app_copy_max_ms"] = max(copy, default=0.0)
    quiet = latencies_ms(logs, t1=quiet_end)
    gate = [s["pause_ms"] for s in runs]
    app = [s["app_stall_ms"] for s in runs]
    return {
        "subsystems": 2, "writers": WRITERS, "export_bytes": PAUSE_EXPORT, "sessions": sessions,
        "pause_ms_max": max(gate), "pause_ms_p99": percentile(gate, 99),
        "pause_wall_ms_max": max(s["pause_wall_ms"] for s in runs),
        "app_stall_ms_max": max(app), "app_stall_ms_p99": percentile(app, 99),
        "app_quiet_p99_ms": percentile(quiet, 99), "app_quiet_max_ms": max(quiet, default=0.0),
        "app_quiet_writes": len(quiet),
        "app_copy_p99_ms_max": max(s["app_copy_p99_ms"] for s in runs),
        "app_copy_max_ms_max": max(s["app_copy_max_ms"] for s in runs),
        "runs": [{k: s[k] for k in ("pause_ms", "pause_ms_by_export", "pause_wall_ms", "app_stall_ms",
                                    "app_copy_p99_ms", "app_copy_max_ms", "chunks_cow", "elapsed_s")} for s in runs],
    }


def speed(rounds: int, sub, uri: str) -> dict:
    ours, peer = [], []
    for _ in range(rounds):
        s = backup([sub.control])
        ours.append({"elapsed_s": s["elapsed_s"], "wall_s": s["wall_s"], "mib_s": SPEED_EXPORT / MiB / s["elapsed_s"]})
        t = nbdcopy_null(uri)
        peer.append({"wall_s": t, "mib_s": SPEED_EXPORT / MiB / t})
    ours_rate = rounds * SPEED_EXPORT / MiB / sum(r["elapsed_s"] for r in ours)
    peer_rate = rounds * SPEED_EXPORT / MiB / sum(r["wall_s"] for r in peer)
    return {"export_bytes": SPEED_EXPORT, "rounds": rounds, "order": "interleaved: tzero, nbdcopy, tzero, nbdcopy, ...",
            "tzero_mib_s": ours_rate, "nbdcopy_mib_s": peer_rate, "ratio": ours_rate / peer_rate,
            "tzero": ours, "nbdcopy": peer}


def write_cost(rounds: int, seconds: float, sub, uri: str) -> dict:
    plain, during = [], []
    for _ in range(rounds):
        plain.append(fio(uri, seconds))
        group = ConsistencyGroup([sub.control])
        group.connect()
        group.open()
        zero = group.freeze_and_thaw()
        group.start_heartbeat()
        try:
            r = fio(uri, seconds)
        finally:
            stats = group.close()
        st = next(iter(stats.values()))
        r.update(chunks_cow=st["chunks_cow"], side_peak_bytes=st["side_peak_bytes"],
                 pause_ms=max(zero["pause_ms"].values()))
        during.append(r)
    iops_plain = sum(r["iops"] for r in plain) / rounds
    iops_during = sum(r["iops"] for r in during) / rounds
    return {"export_bytes": SPEED_EXPORT, "rounds": rounds, "seconds": seconds,
            "fio": "nbd engine, randwrite, bs=4k, iodepth=16, one job",
            "order": "interleaved: no session, session, no session, session, ...",
            "iops_no_session": iops_plain, "iops_session": iops_during, "ratio": iops_during / iops_plain,
            "no_session": plain, "session": during}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--fio-seconds", type=float, default=8)
    args = ap.parse_args()
    need("nbdkit", "nbdcopy", "fio")
    folder = workdir("core")
    result = {"bench": "core", "started": datetime.datetime.now().isoformat(timespec="seconds"), "machine": machine()}
    with Stopper() as stopper:
        say(f"(a) pause: 2 subsystems x {WRITERS} writers, {args.sessions} sessions")
        result["pause"] = pause(args.sessions, stopper, folder)
        stopper.__exit__()
        big = image(os.path.join(folder, "big.img"), SPEED_EXPORT, seed=3)
        sub = stopper.add(serve("big", {"big": big}))
        uri = sub.uri("big")
        say(f"(b) backup of an idle 1 GiB export vs nbdcopy, {args.rounds} rounds")
        result["backup_speed"] = speed(args.rounds, sub, uri)
        say(f"(c) fio 4k randwrite, no session vs session, {args.rounds} rounds of {args.fio_seconds:g} s")
        result["write_cost"] = write_cost(args.rounds, args.fio_seconds, sub, uri)
    result["load_at_end"] = os.getloadavg()
    p, b, w = result["pause"], result["backup_speed"], result["write_cost"]
    result["summary"] = {
        "pause_ms_max": round(p["pause_ms_max"], 3), "pause_ms_p99": round(p["pause_ms_p99"], 3),
        "app_stall_ms_max": round(p["app_stall_ms_max"], 3), "app_stall_ms_p99": round(p["app_stall_ms_p99"], 3),
        "app_quiet_max_ms": round(p["app_quiet_max_ms"], 3),
        "backup_vs_nbdcopy": round(b["ratio"], 3), "tzero_mib_s": round(b["tzero_mib_s"], 1),
        "nbdcopy_mib_s": round(b["nbdcopy_mib_s"], 1),
        "iops_session_vs_none": round(w["ratio"], 3), "iops_no_session": round(w["iops_no_session"]),
        "iops_session": round(w["iops_session"]),
    }
    path = write_result("core", result)
    print(json.dumps(result["summary"], indent=1))
    say(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
