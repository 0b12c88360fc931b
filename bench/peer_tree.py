"""This tree against another revision of tzero, under fio: what a change costs or gains the
applications and the backup, measured in one run, interleaved.

    python bench/peer_tree.py --peer DIR [--size 512M] [--rounds 4] [--fio-seconds 3]
                              [--side-memory 256M] [--profile BACKUPS]

DIR holds another revision of the source tree (for instance `git archive main | tar -x -C
DIR`). Each tree serves its own copy of the same image (the same bytes) with its own
`tzero serve`, both running all along; only one is used at a time. Rounds go this tree,
the peer, this tree, the peer, ...; in each, for each tree: fio (FIO_NOTE in common.py)
alone for a few seconds (none), then fio again while a full backup runs, its stream thrown
away (copying: IOPS over the backup's own window, and the backup's MiB/s by its own
elapsed_s). One backup per tree before the rounds is not counted (the first session after
a start saves into never-touched side memory).

With --profile N, N more backups of each tree under fio afterwards, each controller run
under py-spy (which must be on PATH or in the virtualenv), the samples summed into one
collapsed-stack file in the bench's run folder.

Writes peer_tree.json into the bench's run folder (not bench/results: `make bench` does
not run it, and BENCHMARKS.md comes from one run of that); prints each figure and the
ratios (this tree / peer) with their spread over the rounds.
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import (  # noqa: E402
    FIO_NOTE,
    REPO,
    FioLoad,
    MiB,
    fio,
    image,
    iops_between,
    say,
    workdir,
)
from common.units import parse_size  # noqa: E402


class Tree:
    """One revision's `tzero serve` over its own image, and its `tzero backup`."""

    def __init__(self, name: str, root: str, path: str, side_memory: str):
        self.name = name
        self.root = root
        folder = workdir("run", f"peer-{name}")
        for suffix in (".ctl", ".sock", ".pid"):
            if os.path.exists(os.path.join(folder, "s" + suffix)):
                os.unlink(os.path.join(folder, "s" + suffix))
        self.control = os.path.join(folder, "s.ctl")
        self.socket = os.path.join(folder, "s.sock")
        pidfile = os.path.join(folder, "s.pid")
        self.log = open(os.path.join(folder, "serve.log"), "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "controller", "serve", "--control", self.control,
                                      "--socket", self.socket, "--pidfile", pidfile, "--no-tracking",
                                      "--side-memory", side_memory, "--side-dir", folder, f"w={path}"],
                                     cwd=root, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        while not os.path.exists(pidfile):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"tzero serve of {root} did not start")
            time.sleep(0.05)
        self.uri = f"nbd+unix:///w?socket={self.socket}"

    def backup(self) -> dict:
        cmd = [sys.executable, "-m", "controller", "backup", "-s", self.control, "-o", "-", "--json", "--no-progress"]
        started = time.time()
        proc = subprocess.Popen(cmd, cwd=self.root, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        _, err = proc.communicate(300)
        ended = time.time()
        if proc.returncode != 0:
            raise RuntimeError(f"tzero backup of {self.root} failed: {err.strip()[-2000:]}")
        summary = json.loads(err.strip().splitlines()[-1])
        summary["started"], summary["ended"] = started, ended
        return summary

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(30)
        self.log.close()


def copying(tree: Tree, size: int, tag: str) -> dict:
    load = FioLoad(tree.uri, tag)
    try:
        b = tree.backup()
        time.sleep(0.3)
    finally:
        r = load.stop()
    samples = r.pop("samples")
    # The backup's own window: from its connect (its elapsed_s counts from there) to its end.
    t1 = b["ended"]
    t0 = max(b["started"], t1 - b["elapsed_s"])
    keys = ("elapsed_s", "chunks_cow", "local_refetched_bytes", "local_saved_bytes", "local_saved_spill_bytes",
            "chunks_opportunistic", "side_peak_bytes", "bytes_read")
    return {"iops": iops_between(samples, t0, t1), "mib_s": size / MiB / b["elapsed_s"],
            "lat_p99_ms": r["lat_p99_ms"], "lat_max_ms": r["lat_max_ms"],
            "backup": {k: b.get(k) for k in keys}}


def spread(xs: list[float]) -> str:
    xs = sorted(xs)
    return f"{sum(xs) / len(xs):.3f} (min {xs[0]:.3f}, max {xs[-1]:.3f})"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--peer", required=True, help="another revision's source tree")
    ap.add_argument("--size", default="512M")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--fio-seconds", type=float, default=3)
    ap.add_argument("--side-memory", default="256M")
    ap.add_argument("--profile", type=int, default=0, help="backups of this tree whose controller py-spy records")
    args = ap.parse_args()
    size = parse_size(args.size, "--size")
    load_avg = os.getloadavg()
    trees = [Tree("ours", REPO, image("peer-ours", size, seed=11), args.side_memory),
             Tree("peer", os.path.abspath(args.peer), image("peer-peer", size, seed=11), args.side_memory)]
    per: dict[str, list[dict]] = {t.name: [] for t in trees}
    try:
        for t in trees:
            say(f"peer tree: warm-up of {t.name}")
            copying(t, size, f"{t.name}-warm")
        for rnd in range(args.rounds):
            for t in trees:
                say(f"peer tree: {t.name}, round {rnd + 1}")
                none = fio(t.uri, args.fio_seconds)["iops"]
                c = copying(t, size, f"{t.name}-{rnd}")
                per[t.name].append({"iops_none": none, **c, "copying_vs_none": c["iops"] / none})
        for t in trees if args.profile else []:
            profile(t, args.profile)
    finally:
        for t in trees:
            t.stop()
    ours, peer = per["ours"], per["peer"]
    ratios = {
        "copying_vs_none": {n: [r["copying_vs_none"] for r in per[n]] for n in per},
        "iops_copying_ours_over_peer": [a["iops"] / b["iops"] for a, b in zip(ours, peer, strict=True)],
        "mib_s_ours_over_peer": [a["mib_s"] / b["mib_s"] for a, b in zip(ours, peer, strict=True)],
        "iops_none_ours_over_peer": [a["iops_none"] / b["iops_none"] for a, b in zip(ours, peer, strict=True)],
    }
    with open(os.path.join(workdir("run"), "peer_tree.json"), "w") as f:
        json.dump({"bench": "peer_tree", "export_bytes": size, "fio": FIO_NOTE,
                   "fio_seconds": args.fio_seconds, "rounds": args.rounds, "side_memory": args.side_memory,
                   "peer": os.path.abspath(args.peer), "load_average_at_start": load_avg,
                   "load_average_at_end": os.getloadavg(), "runs": per, "ratios": ratios}, f, indent=1)
    for n in per:
        say(f"{n}: IOPS none {spread([r['iops_none'] for r in per[n]])}; "
            f"copying {spread([r['iops'] for r in per[n]])}; copying/none {spread(ratios['copying_vs_none'][n])}; "
            f"backup MiB/s {spread([r['mib_s'] for r in per[n]])}")
    for k in ("iops_copying_ours_over_peer", "mib_s_ours_over_peer", "iops_none_ours_over_peer"):
        say(f"{k}: {spread(ratios[k])}")
    say(f"load average at start {load_avg}, at end {os.getloadavg()}")
    return 0


def profile(tree: Tree, backups: int) -> None:
    """BACKUPS more backups of TREE under fio, each controller run under py-spy (the controller
    lives too briefly to be attached to); the samples summed into one collapsed-stack file."""
    spy = shutil.which("py-spy") or os.path.join(os.path.dirname(sys.executable), "py-spy")
    out = os.path.join(workdir("run"), f"controller-profile-{tree.name}")
    stacks: dict[str, int] = {}
    say(f"peer tree: profile of {tree.name}'s controller under fio, {backups} backups -> {out}.txt")
    load = FioLoad(tree.uri, "profile")
    try:
        for i in range(backups):
            raw = f"{out}-{i}.txt"
            subprocess.run([spy, "record", "--native", "-r", "500", "-f", "raw", "-o", raw, "--", sys.executable,
                            "-m", "controller", "backup", "-s", tree.control, "-o", "-", "--no-progress"],
                           cwd=tree.root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
            with open(raw) as f:
                for line in f:
                    stack, _, n = line.rstrip("\n").rpartition(" ")
                    stacks[stack] = stacks.get(stack, 0) + int(n)
    finally:
        load.stop()
    with open(f"{out}.txt", "w") as f:
        for stack, n in sorted(stacks.items(), key=lambda kv: -kv[1]):
            f.write(f"{stack} {n}\n")


if __name__ == "__main__":
    sys.exit(main())
