"""The plugin's cost per request: tzero's live export against nbdkit's C file plugin.

    python bench/plugincost.py [--rounds N] [--seconds S] [--profile DIR]

One 1 GiB image, served at once by `tzero serve` and by nbdkit's C `file` plugin (only
one is used at a time). Every round runs, in this order, so that whatever else loads the
machine hits both alike:

  none      fio (FIO_NOTE in common.py) on tzero's export, no session;
  file      the same on nbdkit-file;
  held      fio on tzero's export with a session held through the control protocol,
            nothing copying (every first write to a chunk costs a copy-before-write);
  copying   fio on tzero's export during a full backup (stream to /dev/null);
  light     one dependent writer (bench/writer.py) on tzero's export during a full
            backup, no fio: its longest write in the backup window, and its longest
            write over the same span before the backup;
  light-file  the same writer on nbdkit-file for as long, no backup: the floor.

With --profile DIR, each tzero phase is run once more under `py-spy record --native
--format raw` on the plugin's nbdkit (py-spy must be on PATH; its sampling slows the
plugin, so profiled phases are not counted), and the top frames go to DIR/top.txt.
"""

import argparse
import collections
import os
import subprocess
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
    child_pid,
    fio,
    image,
    iops_between,
    latencies_ms,
    percentile,
    say,
    serve,
    stall_ms,
    write_result,
)
from bench.writecost import NbdkitFile  # noqa: E402
from controller.backup.group import ConsistencyGroup  # noqa: E402

SIZE = 1024 * MiB
PYSPY_EXTRA = os.environ.get("PYSPY_EXTRA", "").split()


def held(sub, seconds: float) -> dict:
    group = ConsistencyGroup([sub.control])
    group.connect()
    group.open()
    group.freeze_and_thaw()
    group.start_heartbeat()
    try:
        return fio(sub.uri("w"), seconds)
    finally:
        stats = next(iter(group.close().values()))
        say(f"  held: {stats['chunks_cow']} chunks saved")


def copying(sub) -> dict:
    load = FioLoad(sub.uri("w"), "pc")
    try:
        started = time.time()
        b = backup([sub.control])
        ended = time.time()
        time.sleep(0.3)
    finally:
        r = load.stop()
    samples = r.pop("samples")
    return {"iops": iops_between(samples, started, ended), "backup_s": b["elapsed_s"],
            "lat_max_ms": r["lat_max_ms"], "chunks_cow": b["chunks_cow"]}


def light(uri: str, sub=None, span_s: float = 2.0) -> dict:
    """One dependent writer on URI; with SUB, a backup of SUB runs in the middle."""
    writers = Writers([uri], 1, "pc-light")
    try:
        time.sleep(0.5)
        quiet0 = time.time()
        time.sleep(span_s)
        t0 = time.time()
        if sub is not None:
            backup([sub.control])
        else:
            time.sleep(span_s)
        t1 = time.time()
        time.sleep(0.2)
    finally:
        logs = writers.stop()
    return {"window_s": t1 - t0, "max_ms": stall_ms(logs, t0, t1),
            "p99_ms": percentile(latencies_ms(logs, t0, t1), 99),
            "quiet_max_ms": stall_ms(logs, quiet0, quiet0 + (t1 - t0)),
            "writes": len(latencies_ms(logs, t0, t1))}


def profile(pid: int, seconds: float, out: str) -> subprocess.Popen:
    return subprocess.Popen(["py-spy", "record", "--native", *PYSPY_EXTRA, "-p", str(pid), "-d", str(int(seconds)),
                             "-r", "200", "--format", "raw", "-o", out],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def top_frames(path: str, n: int = 25) -> str:
    """Self and inclusive shares of the frames in a py-spy raw (collapsed) profile, among the
    samples taken inside an nbdkit callback (a frame of nbdplugin/plugin.py): py-spy sees a
    worker thread only while it holds a Python thread state, and the control threads idle."""
    selfs: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = inside = 0
    with open(path) as f:
        for line in f:
            stack, _, count = line.rstrip().rpartition(" ")
            c = int(count)
            total += c
            frames = stack.split(";")
            if not any("nbdplugin/plugin.py" in fr for fr in frames):
                continue
            inside += c
            selfs[frames[-1]] += c
            for fr in set(frames):
                incl[fr] += c
    inside = max(inside, 1)
    lines = [f"{path}: {total} samples, {inside} in callbacks", "  self:"]
    lines += [f"    {v / inside:6.1%}  {k}" for k, v in selfs.most_common(n)]
    lines += ["  inclusive:"]
    lines += [f"    {v / inside:6.1%}  {k}" for k, v in incl.most_common(n)]
    return "\n".join(lines)


def profiled(sub, pid: int, folder: str, seconds: float) -> None:
    os.makedirs(folder, exist_ok=True)
    reports = []
    for phase in ("none", "held", "copying"):
        out = os.path.join(folder, f"{phase}.txt")
        if phase == "copying":
            load = FioLoad(sub.uri("w"), "pc-prof")
            try:
                time.sleep(0.5)
                p = profile(pid, seconds, out)
                time.sleep(0.3)
                while p.poll() is None:
                    backup([sub.control])
            finally:
                load.stop()
        else:
            p = profile(pid, seconds, out)
            time.sleep(0.5)
            if phase == "none":
                fio(sub.uri("w"), seconds)
            else:
                held(sub, seconds)
        p.wait()
        reports.append(top_frames(out))
    with open(os.path.join(folder, "top.txt"), "w") as f:
        f.write("\n\n".join(reports) + "\n")
    print("\n\n".join(reports))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--profile")
    ap.add_argument("--phases", default="none,file,held,copying,light,light-file")
    args = ap.parse_args()
    phases = args.phases.split(",")
    path = image("w", SIZE, seed=7)
    result: dict = {"bench": "plugincost", "fio": FIO_NOTE, "seconds": args.seconds, "rounds": [],
                    "load_before": os.getloadavg()}
    with Stopper() as stopper:
        sub = stopper.add(serve("pc", {"w": path}))
        nf = stopper.add(NbdkitFile(path))
        pid = child_pid(sub.proc.pid, "nbdkit")
        if args.profile:
            profiled(sub, pid, args.profile, args.seconds)
            return 0
        say("warm-up: one held phase, not counted (bench/writecost.py's warm_up says why)")
        held(sub, args.seconds)
        for rnd in range(args.rounds):
            r: dict = {}
            for ph in phases:
                if ph == "none":
                    r[ph] = fio(sub.uri("w"), args.seconds)
                elif ph == "file":
                    r[ph] = fio(nf.uri, args.seconds)
                elif ph == "held":
                    r[ph] = held(sub, args.seconds)
                elif ph == "copying":
                    r[ph] = copying(sub)
                elif ph == "light":
                    r[ph] = light(sub.uri("w"), sub)
                elif ph == "light-file":
                    r[ph] = light(nf.uri)
                short = {k: round(v, 2) for k, v in r[ph].items() if isinstance(v, (int, float))}
                say(f"round {rnd + 1} {ph}: {short}")
            r["load"] = os.getloadavg()
            result["rounds"].append(r)
    result["load_after"] = os.getloadavg()
    rows = result["rounds"]

    def ratios(a: str, b: str) -> list[float]:
        return [round(x[a]["iops"] / x[b]["iops"], 3) for x in rows if a in x and b in x]

    summary = {"none/file": ratios("none", "file"), "held/none": ratios("held", "none"),
               "held/file": ratios("held", "file"), "copying/none": ratios("copying", "none"),
               "copying/file": ratios("copying", "file"),
               "light_max_ms": [round(x["light"]["max_ms"], 2) for x in rows if "light" in x],
               "light_quiet_max_ms": [round(x["light"]["quiet_max_ms"], 2) for x in rows if "light" in x],
               "light_file_max_ms": [round(x["light-file"]["max_ms"], 2) for x in rows if "light-file" in x],
               "load": [tuple(round(v, 2) for v in x["load"]) for x in rows]}
    result["summary"] = summary
    write_result(os.environ.get("PLUGINCOST_NAME", "plugincost"), result)
    for k, v in summary.items():
        print(f"{k}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
