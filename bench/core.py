"""The core engine's three figures, in one run; prints JSON and writes bench/results/core.json.

 (a) pause: 2 subsystems x 4 dependent writers (4 KiB writes, each writer in its own
     process writing to both subsystems); 10 `tzero backup` sessions. For each, the
     plugin's gate figure (pause_ms, the longest any export held writes) and the
     application's: the longest write in flight at any moment a gate could have been
     closed (bench/sessions.py says how that window is found).
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

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import MiB, Stopper, backup, fio, image, machine, nbdcopy_null, need, say, serve, write_result  # noqa: E402
from bench.sessions import WRITERS, TzeroSide, one_round, summarise  # noqa: E402
from controller.backup.group import ConsistencyGroup  # noqa: E402

PAUSE_EXPORT = 256 * MiB
SPEED_EXPORT = 1024 * MiB


def pause(sessions: int, stopper: Stopper) -> dict:
    layout = {f"p{i}": {f"p{i}": image(f"p{i}", PAUSE_EXPORT, seed=i)} for i in (1, 2)}
    side = TzeroSide(stopper, layout)
    runs, _ = one_round(side, sessions, "core")
    r = summarise(runs)
    r.update(subsystems=2, writers=WRITERS, export_bytes=PAUSE_EXPORT)
    return r


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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--fio-seconds", type=float, default=6)
    args = ap.parse_args(argv)
    need("nbdkit", "nbdcopy", "fio")
    result = {"bench": "core", "started": datetime.datetime.now().isoformat(timespec="seconds"), "machine": machine()}
    with Stopper() as stopper:
        say(f"(a) pause: 2 subsystems x {WRITERS} writers, {args.sessions} sessions")
        result["pause"] = pause(args.sessions, stopper)
        stopper.__exit__()
        big = image("big", SPEED_EXPORT, seed=3)
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
        "app_quiet_p99_ms": round(p["quiet_p99_ms_max"], 3),
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
