"""Incremental backups on one 1 GiB image: tzero against qemu-storage-daemon's own, and what
change tracking costs the write path.

Each round, for each workload, both systems in turn (on the same image file, one served at
a time): a full backup, then the workload through the system's live NBD export, then an
incremental backup of what changed; tzero also takes a full backup of that same state, the
figure an incremental is worth against.

  workloads   clustered: 5% of the image rewritten in random 64 KiB-aligned 64 KiB pieces;
              scattered: 5% of the image rewritten in random 4 KiB pieces (touching far more
              than 5% of the 64 KiB chunks both systems track)
  tzero       `tzero backup -o FILE`, then `--since FILE`: streams written to files
  QSD         a transaction of block-dirty-bitmap-add (granularity 64 KiB) and blockdev-backup
              sync=full into a raw file, then blockdev-backup sync=incremental with that bitmap
              into another raw file (the changed clusters at their offsets)

Write IOPS with tracking and without: fio (FIO_NOTE) on tzero's live export, served by a
`tzero serve` started with change tracking (its default) or with --no-tracking, in turns.
"""

import json
import os
import random
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import nbd  # noqa: E402

from bench.common import (  # noqa: E402
    FIO_NOTE,
    REPO,
    TZERO,
    MiB,
    Stopper,
    fio,
    image,
    machine,
    say,
    serve,
    workdir,
    write_result,
)
from bench.qsd import StorageDaemon  # noqa: E402

SIZE = 1024 * MiB
CHUNK = 64 << 10
SHARE = 0.05
ROUNDS = 2
FIO_S = 5
IOPS_ROUNDS = 3
WORKLOADS = ("clustered", "scattered")


def pieces(workload: str, seed: int) -> list[tuple[int, int]]:
    """(offset, length) writes that rewrite SHARE of the image."""
    rnd = random.Random(seed)
    if workload == "clustered":
        chunks = rnd.sample(range(SIZE // CHUNK), int(SIZE // CHUNK * SHARE))
        return [(c * CHUNK, CHUNK) for c in chunks]
    count = int(SIZE * SHARE) // 4096
    return [(rnd.randrange(SIZE // 4096) * 4096, 4096) for _ in range(count)]


def apply(uri: str, writes: list[tuple[int, int]], seed: int) -> None:
    h = nbd.NBD()
    h.connect_uri(uri)
    data = random.Random(seed).randbytes(CHUNK)
    for offset, length in writes:
        h.pwrite(data[:length], offset)
    h.flush()
    h.shutdown()


def tzero_backup(control: str, out: str, *extra: str) -> dict:
    started = time.monotonic()
    proc = subprocess.run([*TZERO, "backup", "-s", control, "-o", out, "--force", "--json", "--no-progress", *extra],
                          capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0:
        raise RuntimeError(f"tzero backup failed: {proc.stderr.strip()[-2000:]}")
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    summary["wall_s"] = time.monotonic() - started
    return summary


def tzero_run(path: str, workload: str, seed: int) -> dict:
    folder = workdir("bk")
    full, inc, again = (os.path.join(folder, n) for n in ("full.tzb", "inc.tzb", "full-again.tzb"))
    with Stopper() as stop:
        sub = stop.add(serve("inc", {"d": path}))
        f = tzero_backup(sub.control, full)
        apply(sub.uri("d"), pieces(workload, seed), seed)
        i = tzero_backup(sub.control, inc, "--since", full)
        assert i["kind"] == "incremental", i
        g = tzero_backup(sub.control, again)
    # wall: the whole `tzero backup` process (Python start and imports included); elapsed: its own
    # figure, from its start of work (parsing done) to the stream's end: the peer of QSD's job time
    return {"full_bytes": f["bytes"], "full_s": f["wall_s"], "inc_bytes": i["bytes"], "inc_s": i["wall_s"],
            "inc_elapsed_s": i["elapsed_s"], "inc_changed_bytes": i["changed_bytes"], "inc_pause_ms": i["pause_ms"],
            "full_again_bytes": g["bytes"], "full_again_s": g["wall_s"], "full_again_elapsed_s": g["elapsed_s"]}


def qsd_run(path: str, workload: str, seed: int, targets: tuple[str, str]) -> dict:
    with Stopper() as stop:
        qsd = stop.add(StorageDaemon(workdir("run"), "qsdinc", {"d": path}, file_targets={"d": targets[0]}))
        qsd.qmp.execute("blockdev-add", driver="file", filename=targets[1], **{"node-name": "inc-target"},
                        cache={"direct": False})
        started = time.monotonic()
        qsd.qmp.execute("transaction", actions=[
            {"type": "block-dirty-bitmap-add", "data": {"node": "d", "name": "bm", "granularity": CHUNK}},
            {"type": "blockdev-backup", "data": {"job-id": "job-d", "device": "d", "target": "file-target-d",
                                                 "sync": "full", "auto-dismiss": True}}])
        full = qsd.qmp.wait_event("BLOCK_JOB_COMPLETED", 600, device="job-d")
        full_s = time.monotonic() - started
        apply(qsd.uri("d"), pieces(workload, seed), seed)
        started = time.monotonic()
        qsd.qmp.execute("blockdev-backup", **{"job-id": "job-i", "device": "d", "target": "inc-target",
                                              "sync": "incremental", "bitmap": "bm", "auto-dismiss": True})
        inc = qsd.qmp.wait_event("BLOCK_JOB_COMPLETED", 600, device="job-i")
        inc_s = time.monotonic() - started
    for ev in (full, inc):
        if ev["data"].get("error"):
            raise RuntimeError(f"QSD backup failed: {ev['data']['error']}")
    return {"full_bytes": full["data"]["len"], "full_s": full_s, "inc_bytes": inc["data"]["len"], "inc_s": inc_s}


def iops(path: str) -> dict:
    out: dict[str, list[float]] = {"tracking": [], "no-tracking": []}
    for _ in range(IOPS_ROUNDS):
        for name, options in (("tracking", ()), ("no-tracking", ("--no-tracking",))):
            with Stopper() as stop:
                sub = stop.add(serve("iops", {"d": path}, *options))
                out[name].append(fio(sub.uri("d"), FIO_S)["iops"])
    return out


def mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def main() -> int:
    path = image("incremental", SIZE, seed=13)
    targets = (image("incremental-qsd-full", SIZE, seed=14), image("incremental-qsd-inc", SIZE, seed=15))
    runs: dict[str, dict[str, list[dict]]] = {w: {"tzero": [], "qsd": []} for w in WORKLOADS}
    for rnd in range(ROUNDS):
        for workload in WORKLOADS:
            seed = 1000 * rnd + WORKLOADS.index(workload)
            say(f"incremental round {rnd + 1}/{ROUNDS}, {workload}: tzero")
            runs[workload]["tzero"].append(tzero_run(path, workload, seed))
            say(f"incremental round {rnd + 1}/{ROUNDS}, {workload}: qemu-storage-daemon")
            runs[workload]["qsd"].append(qsd_run(path, workload, seed, targets))
    say("write IOPS with change tracking and without")
    rates = iops(path)
    summary = {}
    for workload, by in runs.items():
        t, q = by["tzero"], by["qsd"]
        summary[workload] = {
            "tzero_inc_bytes": mean([r["inc_bytes"] for r in t]), "tzero_inc_s": mean([r["inc_s"] for r in t]),
            "tzero_inc_elapsed_s": mean([r["inc_elapsed_s"] for r in t]),
            "tzero_full_bytes": mean([r["full_again_bytes"] for r in t]),
            "tzero_full_s": mean([r["full_again_s"] for r in t]),
            "tzero_full_elapsed_s": mean([r["full_again_elapsed_s"] for r in t]),
            "tzero_changed_bytes": mean([r["inc_changed_bytes"] for r in t]),
            "qsd_inc_bytes": mean([r["inc_bytes"] for r in q]), "qsd_inc_s": mean([r["inc_s"] for r in q]),
            "qsd_full_bytes": mean([r["full_bytes"] for r in q]), "qsd_full_s": mean([r["full_s"] for r in q]),
        }
    summary["iops"] = {"tracking": mean(rates["tracking"]), "no_tracking": mean(rates["no-tracking"]),
                       "ratio": mean(rates["tracking"]) / mean(rates["no-tracking"])}
    result = {"bench": "incremental", "export_bytes": SIZE, "share": SHARE, "chunk": CHUNK, "rounds": ROUNDS,
              "fio": FIO_NOTE, "fio_seconds": FIO_S, "iops_rounds": IOPS_ROUNDS, "machine": machine(),
              "runs": runs, "iops": rates, "summary": summary}
    say(f"wrote {write_result('incremental', result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
