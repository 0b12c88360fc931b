"""What each --rate costs the applications and the backup, on one 1 GiB export.

fio (FIO_NOTE in common.py) writes to the live export throughout; each backup starts
after LEAD_S of it, so the same fio run gives the IOPS with no backup (the last second
before the backup is launched) and during the copy (time zero, or QSD's transaction, to
the backup's end). Per setting: tzero with
--rate max, auto, and two fixed rates; the peer is QEMU's backup job in
qemu-storage-daemon with x-perf max-workers=1 (bench/qsd.py), at full speed, over the
same content (its own copy of the image: tzero serve holds its image as QEMU holds a
disk). Every backup's stream is thrown away (tzero `-o -` to /dev/null, QSD's job
into null-co). Then the same settings again with one light dependent writer
(bench/writer.py) instead of fio: its longest single write in flight during the backup.

Rounds interleave the settings (tzero max, auto, fixed..., QSD, then again) so that
whatever else loads the machine hits them alike.
"""

import datetime
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import (  # noqa: E402
    FIO_NOTE,
    FioLoad,
    MiB,
    Stopper,
    Writers,
    backup,
    image,
    iops_between,
    say,
    serve,
    stall_ms,
    workdir,
    write_result,
)
from bench.qsd import StorageDaemon  # noqa: E402

SIZE = 1024 * MiB
ROUNDS = 2
LEAD_S = 1.5  # fio runs this long before each backup: the IOPS with no backup
HOT = ("--size=64M",)  # the hot workload: fio on the first 64 MiB only
# (workload, settings): fio over the whole export (nearly every write saves a chunk at first),
# fio on a hot 64 MiB (its chunks saved, its writes cost no copy-before-write: auto yields),
# one light dependent writer.
PLAN = (("fio", ("max", "auto", "256M", "qsd-mw1")), ("hot", ("max", "auto", "qsd-mw1")),
        ("writer", ("max", "auto", "256M", "qsd-mw1")))



def take(setting: str, sub, daemon) -> dict:
    """One backup at SETTING; its copy window (wall clock) and speed."""
    if setting == "qsd-mw1":
        r = daemon.start_backup(["w"], 1)
        ended = daemon.wait_backup(["w"])
        return {"t0": r["sent"], "t1": ended, "elapsed_s": ended - r["sent"], "waited_s": None}
    s = backup([sub.control], "--rate", setting)
    ended = time.time()
    zero = datetime.datetime.fromisoformat(s["time_zero"]).timestamp()
    return {"t0": zero, "t1": ended, "elapsed_s": s["elapsed_s"], "waited_s": s["rate_waited_s"],
            "chunks_cow": s["chunks_cow"], "chunks_opportunistic": s["chunks_opportunistic"]}


def under_fio(setting: str, uri: str, sub, daemon, tag: str, extra: tuple[str, ...] = ()) -> dict:
    load = FioLoad(uri, tag, extra=extra)
    try:
        time.sleep(LEAD_S)
        launched = time.time()  # the none window ends here: a tzero backup's interpreter start is no copy
        b = take(setting, sub, daemon)
        time.sleep(0.3)
    finally:
        r = load.stop()
    samples = r.pop("samples")
    b.update(iops_none=iops_between(samples, launched - LEAD_S + 0.5, launched),
             iops_copying=iops_between(samples, b["t0"], b["t1"]),
             lat_p99_ms=r["lat_p99_ms"], lat_max_ms=r["lat_max_ms"], mib_s=SIZE / MiB / b["elapsed_s"])
    return b


def under_writer(setting: str, uri: str, sub, daemon, tag: str) -> dict:
    writers = Writers([uri], 1, tag)
    try:
        time.sleep(0.5)
        b = take(setting, sub, daemon)
    finally:
        logs = writers.stop()
    b["longest_write_ms"] = stall_ms(logs, b["t0"], b["t1"])
    b["mib_s"] = SIZE / MiB / b["elapsed_s"]
    return b


def mean(xs) -> float:
    xs = list(xs)
    return sum(xs) / len(xs) if xs else 0.0


def summarise_fio(runs: list) -> dict:
    return {
        "iops_none": mean(r["iops_none"] for r in runs),
        "iops_copying": mean(r["iops_copying"] for r in runs),
        "copying_vs_none": mean(r["iops_copying"] / r["iops_none"] for r in runs if r["iops_none"]),
        "copying_vs_none_spread": [min(r["iops_copying"] / r["iops_none"] for r in runs),
                                   max(r["iops_copying"] / r["iops_none"] for r in runs)],
        "lat_p99_ms": max(r["lat_p99_ms"] for r in runs),
        "lat_max_ms": max(r["lat_max_ms"] for r in runs),
        "mib_s": SIZE / MiB * len(runs) / sum(r["elapsed_s"] for r in runs),
        "copy_s": mean(r["elapsed_s"] for r in runs),
        "chunks_cow": mean(r.get("chunks_cow", 0) for r in runs),
        "waited_s": mean(r["waited_s"] or 0 for r in runs),
    }


def summarise_writer(runs: list) -> dict:
    return {"longest_write_ms": max(r["longest_write_ms"] for r in runs),
            "mib_s": SIZE / MiB * len(runs) / sum(r["elapsed_s"] for r in runs),
            "copy_s": mean(r["elapsed_s"] for r in runs)}


def main() -> int:
    path = image("w", SIZE, seed=7)
    # Its own copy for the peer: tzero serve holds its image as QEMU holds a disk (image locks).
    peer_path = image("w-peer", SIZE, seed=7)
    result = {"bench": "rate", "export_bytes": SIZE, "fio": FIO_NOTE, "rounds": ROUNDS, "lead_s": LEAD_S,
              "plan": [[w, list(s)] for w, s in PLAN], "hot": " ".join(HOT), "load_at_start": os.getloadavg(),
              "order": "interleaved by round: each setting in turn under fio over the whole export, then under "
                       "fio on its first 64 MiB, then under one dependent writer; then again"}
    runs: dict[str, dict[str, list]] = {w: {k: [] for k in settings} for w, settings in PLAN}
    with Stopper() as stopper:
        sub = stopper.add(serve("rate", {"w": path}))
        daemon = stopper.add(StorageDaemon(workdir("run"), "qsd-rate", {"w": peer_path}, log=open(os.devnull, "w")))
        uris = {"tzero": sub.uri("w"), "qsd": daemon.uri("w")}
        backup([sub.control])  # warm: the first session after a start pays for fresh side-store pages
        for rnd in range(ROUNDS):
            for workload, settings in PLAN:
                for setting in settings:
                    uri = uris["qsd" if setting.startswith("qsd") else "tzero"]
                    tag = f"rate-{workload}-{setting}-{rnd}"
                    say(f"rate: {setting} under {workload}, round {rnd + 1}")
                    if workload == "writer":
                        r = under_writer(setting, uri, sub, daemon, tag)
                    else:
                        r = under_fio(setting, uri, sub, daemon, tag, HOT if workload == "hot" else ())
                    runs[workload][setting].append(r)
    result["load_at_end"] = os.getloadavg()
    result["summary"] = {w: {k: (summarise_writer if w == "writer" else summarise_fio)(v) for k, v in by.items()}
                         for w, by in runs.items()}
    result["runs"] = runs
    write_result("rate", result)
    for workload, by in result["summary"].items():
        for name, s in by.items():
            say(f"{workload} {name}: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                                  for k, v in s.items()))
    return 0


LABEL = {"max": "tzero --rate max", "auto": "tzero --rate auto", "qsd-mw1": "QSD (max-workers=1), full speed"}


def _label(name: str) -> str:
    return LABEL.get(name, f"tzero --rate {name}")


def report_section(data: dict) -> list[str]:
    """The section of BENCHMARKS.md (bench/report.py calls it)."""
    from bench.report import f, table

    s = data["summary"]
    load = ", ".join(f(v) for v in data["load_at_start"])
    out = ["## 10. What each --rate costs the applications and the backup (bench/rate.py)", "",
           f"One {data['export_bytes'] >> 30} GiB export. Under fio ({data['fio']}), each backup launched after "
           f"{f(data['lead_s'], 1)} s of it: IOPS with no backup are the last second before the launch, IOPS "
           "during the copy run from time zero (QSD: its transaction) to the backup's end, both from the same "
           "fio run; p99 and max are fio's whole run. Two fio workloads: over the whole export (nearly every "
           f"write saves a chunk at first), and hot ({data['hot']}: its chunks saved early, then its writes cost "
           "no copy-before-write). Then one light dependent writer (bench/writer.py): its longest single write "
           "in flight during the backup. Streams thrown away; the peer is QSD (max-workers=1) at full speed. "
           f"{data['rounds']} rounds ({data['order']}); IOPS and speed are means (spread of copying/none in "
           f"brackets), latencies the worst. Load average at the start: {load}.", ""]
    for workload, what in (("fio", "fio over the whole export"), ("hot", "fio on a hot 64 MiB")):
        by = s[workload]
        peer = by["qsd-mw1"]
        rows = []
        for name, x in by.items():
            lo, hi = x["copying_vs_none_spread"]
            rows.append([_label(name), f(x["iops_none"], 0), f(x["iops_copying"], 0),
                         f"{f(x['copying_vs_none'])} ({f(lo)}-{f(hi)})", f(x["lat_p99_ms"], 1),
                         f(x["lat_max_ms"], 0), f(x["mib_s"], 0), f(x["copy_s"]),
                         f(x["chunks_cow"], 0) if name != "qsd-mw1" else "-",
                         f(x["waited_s"]) if name != "qsd-mw1" else "-"])
        for name, x in by.items():
            if name != "qsd-mw1":
                rows.append([f"{_label(name)} / QSD", "", "", f(x["copying_vs_none"] / peer["copying_vs_none"]),
                             f(x["lat_p99_ms"] / peer["lat_p99_ms"]), f(x["lat_max_ms"] / peer["lat_max_ms"]),
                             f(x["mib_s"] / peer["mib_s"]), "", "", ""])
        out += [f"### {what}", ""] + table(
            ["setting", "IOPS none", "IOPS copying", "copying / none", "p99 ms", "max ms", "backup MiB/s",
             "copy s", "chunks saved", "waited for the rate s"], rows)
    by = s["writer"]
    peer = by["qsd-mw1"]
    rows = [[_label(name), f(x["longest_write_ms"], 1), f(x["mib_s"], 0), f(x["copy_s"]),
             f(x["longest_write_ms"] / peer["longest_write_ms"]) if name != "qsd-mw1" else "-"]
            for name, x in by.items()]
    out += ["### one light dependent writer", ""] + table(
        ["setting", "longest write during the backup ms", "backup MiB/s", "copy s", "longest write / QSD's"], rows)
    return out


if __name__ == "__main__":
    sys.exit(main())
