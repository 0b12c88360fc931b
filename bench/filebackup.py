"""An idle backup of two 1 GiB exports into a file, against moving the same bytes with `cat`
and against QEMU's backup job into raw files; prints JSON and writes bench/results/filebackup.json.

One subsystem serves both images (two exports); nothing writes to them. Each round, in turn:

 tzero   `tzero backup -s CTL -o -` with its standard output a file opened O_WRONLY, no O_TRUNC:
         the stream overwrites the output file in place. Timed twice: the whole command (wall,
         interpreter start included) and its own elapsed_s (from its start to the summary).
 cat     `cat IMG1 IMG2` into the same file, opened the same way (conv=notrunc): the limit of
         moving those bytes from the page cache into a file on this machine.
 QSD     qemu-storage-daemon serving the same images, one transaction of two sync=full
         blockdev-backup jobs with x-perf max-workers=1 into two raw file nodes (files of the
         images' size): from sending the transaction to the last completion event.
 pipes   the same tzero and cat runs into a pipe whose reader (`cat > /dev/null`) throws the
         bytes away: the cost of the stream without the file system.

Every output file is made once, written fully once by an untimed run, and then overwritten in
place, never synced by the runs themselves; every timed run starts from an `os.sync()` (untimed)
so that none pays for the writeback of the run before it.

    python bench/filebackup.py [--rounds N] [--baseline DIR]

--baseline DIR adds another tzero (a checkout of an earlier version at DIR, run with this
interpreter) into the same rounds, right after ours: "baseline" and "baseline-pipe".
"""

import argparse
import datetime
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import REPO, TZERO, MiB, Stopper, image, machine, need, say, serve, workdir, write_result  # noqa: E402
from bench.qsd import StorageDaemon  # noqa: E402

EXPORT = 1024 * MiB
NAMES = ("fb1", "fb2")
SYSTEMS = ("tzero", "cat", "qsd-mw1", "tzero-pipe", "cat-pipe")


def _stdout_file(path: str) -> int:
    """PATH for writing in place: no O_CREAT, no O_TRUNC (what `dd conv=notrunc` does)."""
    return os.open(path, os.O_WRONLY)


def _drain() -> subprocess.Popen:
    """A pipe reader that throws everything away: `cat > /dev/null`."""
    return subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)


def tzero(control: str, to: str | None, checkout: str = REPO) -> dict:
    """`tzero backup -o -` (from CHECKOUT) into the file TO (in place) or, with None, into a pipe;
    wall and elapsed."""
    cmd = [*TZERO, "backup", "-s", control, "-o", "-", "--json", "--no-progress"]
    drain = _drain() if to is None else None
    out = _stdout_file(to) if to is not None else drain.stdin
    with open(os.path.join(workdir("run"), "filebackup.err"), "w+") as err:
        started = time.monotonic()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, cwd=checkout)
        if to is not None:
            os.close(out)
        else:
            drain.stdin.close()
        proc.wait()
        if drain is not None:
            drain.wait()
        wall = time.monotonic() - started
        err.seek(0)
        text = err.read()
    if proc.returncode != 0:
        raise RuntimeError(f"tzero backup failed ({proc.returncode}): {text.strip()[-2000:]}")
    summary = json.loads(text.strip().splitlines()[-1])
    return {"wall_s": wall, "elapsed_s": summary["elapsed_s"], "bytes": summary["bytes"]}


def cat(images: list[str], to: str | None) -> dict:
    """`cat IMAGES` into the file TO (in place) or, with None, into a pipe to `cat > /dev/null`."""
    drain = _drain() if to is None else None
    out = _stdout_file(to) if to is not None else drain.stdin
    started = time.monotonic()
    proc = subprocess.Popen(["cat", *images], stdout=out)
    if to is not None:
        os.close(out)
    else:
        drain.stdin.close()
    rc = proc.wait()
    if drain is not None:
        drain.wait()
    wall = time.monotonic() - started
    if rc != 0:
        raise RuntimeError(f"cat failed ({rc})")
    return {"wall_s": wall}


def qsd(daemon: StorageDaemon) -> dict:
    r = daemon.start_backup(list(NAMES), max_workers=1, to_file=True)
    ended = daemon.wait_backup(list(NAMES))
    return {"wall_s": ended - r["sent"]}


def mean(xs) -> float:
    xs = list(xs)
    return sum(xs) / len(xs)


def summarise(runs: dict) -> dict:
    out = _summary(runs)
    if "baseline" in runs:
        base = mean(r["elapsed_s"] for r in runs["baseline"]) / out["tzero_elapsed_s"]
        base_pipe = mean(r["elapsed_s"] for r in runs["baseline-pipe"]) / out["tzero_pipe_elapsed_s"]
        out.update(baseline_wall_s=mean(r["wall_s"] for r in runs["baseline"]),
                   baseline_elapsed_s=mean(r["elapsed_s"] for r in runs["baseline"]),
                   baseline_pipe_elapsed_s=mean(r["elapsed_s"] for r in runs["baseline-pipe"]),
                   vs_baseline_elapsed=base, pipe_vs_baseline_elapsed=base_pipe,
                   baseline_vs_cat_wall=out["cat_s"] / mean(r["wall_s"] for r in runs["baseline"]),
                   vs_baseline_elapsed_rounds=[round(b["elapsed_s"] / o["elapsed_s"], 3)
                                               for b, o in zip(runs["baseline"], runs["tzero"], strict=True)])
    return out


def _summary(runs: dict) -> dict:
    """Mean times over the rounds, and the ratios as speeds (peer time / tzero time: above 1 is
    tzero faster); each ratio also per round, for the spread."""
    t = {n: mean(r["wall_s"] for r in runs[n]) for n in SYSTEMS}
    te = mean(r["elapsed_s"] for r in runs["tzero"])
    tpe = mean(r["elapsed_s"] for r in runs["tzero-pipe"])

    def per_round(peer: str, ours: str, key: str) -> list[float]:
        return [round(p["wall_s"] / o[key], 3) for p, o in zip(runs[peer], runs[ours], strict=True)]

    return {
        "tzero_wall_s": t["tzero"], "tzero_elapsed_s": te, "cat_s": t["cat"], "qsd_mw1_s": t["qsd-mw1"],
        "tzero_pipe_wall_s": t["tzero-pipe"], "tzero_pipe_elapsed_s": tpe, "cat_pipe_s": t["cat-pipe"],
        "vs_cat_wall": t["cat"] / t["tzero"], "vs_cat_elapsed": t["cat"] / te,
        "vs_qsd_wall": t["qsd-mw1"] / t["tzero"], "vs_qsd_elapsed": t["qsd-mw1"] / te,
        "pipe_vs_cat_wall": t["cat-pipe"] / t["tzero-pipe"], "pipe_vs_cat_elapsed": t["cat-pipe"] / tpe,
        "vs_cat_wall_rounds": per_round("cat", "tzero", "wall_s"),
        "vs_cat_elapsed_rounds": per_round("cat", "tzero", "elapsed_s"),
        "vs_qsd_elapsed_rounds": per_round("qsd-mw1", "tzero", "elapsed_s"),
        "pipe_vs_cat_wall_rounds": per_round("cat-pipe", "tzero-pipe", "wall_s"),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--baseline", metavar="DIR", help="another tzero checkout to run in the same rounds")
    args = ap.parse_args(argv)
    systems = SYSTEMS
    if args.baseline:
        systems = ("tzero", "baseline", "cat", "qsd-mw1", "tzero-pipe", "baseline-pipe", "cat-pipe")
    need("nbdkit", "qemu-storage-daemon", "cat")
    result = {"bench": "filebackup", "started": datetime.datetime.now().isoformat(timespec="seconds"),
              "machine": machine(), "export_bytes": EXPORT, "exports": len(NAMES), "subsystems": 1,
              "rounds": args.rounds, "order": "interleaved by round: " + ", ".join(systems) + ", then again"}
    images = [image(n, EXPORT, seed=20 + i) for i, n in enumerate(NAMES)]
    # QSD's targets: files of the images' size, filled once like the images (never holes).
    targets = {n: image(f"{n}-qsd-target", EXPORT, seed=30 + i) for i, n in enumerate(NAMES)}
    out = os.path.join(workdir("out"), "filebackup.tzst")
    if not os.path.exists(out):
        open(out, "wb").close()
    runs: dict[str, list] = {n: [] for n in systems}
    with Stopper() as stopper:
        sub = stopper.add(serve("fb", dict(zip(NAMES, images, strict=True))))
        log = open(os.path.join(workdir("run"), "fb-qsd.log"), "w")
        daemon = stopper.add(StorageDaemon(workdir("run"), "fbqsd", dict(zip(NAMES, images, strict=True)), log=log,
                                           file_targets=targets))
        say("filebackup: one untimed run of each (the output file written fully once)")
        first = tzero(sub.control, out)
        result["stream_bytes"] = first["bytes"]
        cat(images, out)
        qsd(daemon)
        for rnd in range(args.rounds):
            say(f"filebackup: round {rnd + 1} of {args.rounds}")
            for name in systems:
                os.sync()
                to = None if name.endswith("-pipe") else out
                if name == "qsd-mw1":
                    runs[name].append(qsd(daemon))
                elif name.startswith("tzero"):
                    runs[name].append(tzero(sub.control, to))
                elif name.startswith("baseline"):
                    runs[name].append(tzero(sub.control, to, args.baseline))
                else:
                    runs[name].append(cat(images, to))
    result["load_at_end"] = os.getloadavg()
    result["runs"] = runs
    result["summary"] = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in summarise(runs).items()}
    path = write_result("filebackup", result)
    print(json.dumps(result["summary"], indent=1))
    say(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
