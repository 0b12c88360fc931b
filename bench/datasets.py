"""Datasets across subsystems, measured in one run; prints one JSON object.

    python -m bench.datasets [--leg-mib 1024] [--repeat 3]

1. A stripe volume (64 KiB stripe) over two 1 GiB legs on two subsystems, backed up
   with --host-memory 64M while four dependent writers write to the volume: the
   controller's peak RSS (the backup runs as the only child of a fresh parent, whose
   RUSAGE_CHILDREN maxrss is then the backup's VmHWM) and its MiB/s.
2. The same stripe, idle, with both legs on one subsystem and with the legs on two
   subsystems: backup MiB/s, same bytes, REPEAT runs each taking turns (median reported).
   These run first, before the writers dirty the images.

The stream goes to a pipe that discards it (-o -), so the figures are the copy's.
Images are made once in BENCH_DIR and rewritten in place (see bench/common.py). Run it
alone, or with a BENCH_DIR of its own: bench/run.py removes its BENCH_DIR when done,
sockets of a running subsystem included.
"""

import argparse
import json
import statistics
import subprocess
import sys
import time

from bench.common import REPO, TZERO, MiB, image, say, serve
from testkit.workload import DependentWriter, StripedVolume

STRIPE = 64 << 10
WRITERS = 4
HOST_MEMORY = "64M"

# Run the backup as the only child of a fresh parent: RUSAGE_CHILDREN's maxrss is then its peak RSS.
_MEASURE = (
    "import json, resource, subprocess, sys\n"
    "p = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)\n"
    "u = resource.getrusage(resource.RUSAGE_CHILDREN)\n"
    "print(json.dumps({'rc': p.returncode, 'maxrss_kib': u.ru_maxrss, 'cpu_s': u.ru_utime + u.ru_stime,"
    " 'stderr': p.stderr}))\n"
)


def measured_backup(controls: list[str], *extra) -> dict:
    cmd = [*TZERO, "backup", *[a for c in controls for a in ("-s", c)], "-o", "-", "--json", "--no-progress",
           "--host-memory", HOST_MEMORY, "--dataset", f"vol=stripe:{STRIPE >> 10}K:x,y", *extra]
    started = time.monotonic()
    out = subprocess.run([sys.executable, "-c", _MEASURE, *cmd], capture_output=True, text=True, cwd=REPO, check=True)
    wall = time.monotonic() - started
    result = json.loads(out.stdout)
    if result["rc"] != 0:
        raise RuntimeError(f"tzero backup failed: {result['stderr'][-2000:]}")
    summary = json.loads(result["stderr"].strip().splitlines()[-1])
    volume = summary["data_bytes"]  # bench images have no zero chunks, so records hold every byte
    return {
        "peak_rss_mib": round(result["maxrss_kib"] / 1024, 1),
        "mib_s": round(volume / MiB / summary["elapsed_s"], 1),
        "elapsed_s": summary["elapsed_s"],
        "controller_cpu_s": round(result["cpu_s"], 3),  # near elapsed_s: the controller's one thread is the limit
        "wall_s": round(wall, 3),
        **{k: summary[k] for k in ("pause_ms", "chunks_cow", "chunks_in_order", "chunks_ahead",
                                   "chunks_opportunistic", "spilled_bytes", "peak_host_buffer_bytes",
                                   "side_peak_bytes")},
    }


def with_writers(subsystems, leg: int) -> dict:
    volume = StripedVolume(STRIPE, [(subsystems[0].socket, "x"), (subsystems[-1].socket, "y")], leg)
    writers = [DependentWriter(i, WRITERS, [volume], [volume.size], seed=i) for i in range(WRITERS)]
    for w in writers:
        w.start()
    try:
        time.sleep(1)
        before = sum(len(w.log) for w in writers)
        result = measured_backup([s.control for s in subsystems])
        result["writes_during_backup"] = sum(len(w.log) for w in writers) - before
    finally:
        for w in writers:
            w.stop.set()
        for w in writers:
            w.join()
    errors = [repr(w.error) for w in writers if w.error]
    if errors:
        raise RuntimeError(f"writers failed: {errors}")
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leg-mib", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    leg = args.leg_mib * MiB
    paths = {n: image(f"datasets-{n}", leg, seed=i) for i, n in enumerate("xy")}
    report = {"leg_bytes": leg, "stripe": STRIPE, "host_memory": HOST_MEMORY, "writers": WRITERS}
    # Idle first, one and two subsystems taking turns over the same image files, so page
    # cache and writeback treat both alike; then the writers, which dirty the images.
    two = [serve("ds-s1", {"x": paths["x"]}), serve("ds-s2", {"y": paths["y"]})]
    one = serve("ds-s", paths)
    try:
        report["one_subsystem_idle"], report["two_subsystems_idle"] = [], []
        for i in range(args.repeat):
            say(f"idle, one subsystem then two ({i + 1}/{args.repeat})")
            report["one_subsystem_idle"].append(measured_backup([one.control]))
            report["two_subsystems_idle"].append(measured_backup([s.control for s in two]))
        say("two subsystems, writers running")
        report["two_subsystems_with_writers"] = with_writers(two, leg)
    finally:
        for s in [*two, one]:
            s.stop()
    two_rate = statistics.median(r["mib_s"] for r in report["two_subsystems_idle"])
    one_rate = statistics.median(r["mib_s"] for r in report["one_subsystem_idle"])
    report["summary"] = {
        "peak_rss_mib_2x1GiB_stripe_host_memory_64M_with_writers":
            report["two_subsystems_with_writers"]["peak_rss_mib"],
        "mib_s_one_subsystem": one_rate,
        "mib_s_two_subsystems": two_rate,
        "two_over_one": round(two_rate / one_rate, 2),
    }
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
