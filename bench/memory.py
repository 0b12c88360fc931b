"""Memory under overwrite pressure, and growth with the dataset size.

Memory: one subsystem serving a 1 GiB image with --side-memory 64M; `tzero backup
--host-memory 64M` whose stream is read slowly (about 100 MiB/s) while fio overwrites
the image with 64 KiB random writes, so copy-before-write saves far more than twice
the side memory. Peak RSS (VmHWM) of the plugin (nbdkit) and of the controller
against the bounds: plugin <= side-memory + 64 MiB, controller <= host-memory + 64 MiB.

Growth: an idle backup of one export of 256 MiB, 1 GiB, 4 GiB and 8 GiB: time, MiB/s,
`nbdcopy` of the same live export for the ratio, and peak RSS of plugin and controller.
A size is skipped (and says so) when the machine lacks the free memory for its image
in page cache plus the controller.
"""

import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import (  # noqa: E402
    REPO,
    TZERO,
    MiB,
    Stopper,
    backup,
    child_pid,
    drop_image,
    image,
    nbdcopy_null,
    rss_kib,
    say,
    serve,
    workdir,
    write_result,
)

SIDE = 64 * MiB
HOST = 64 * MiB
SLACK = 64 * MiB
PACE_BYTES_S = 100 * MiB
GROWTH = (256 * MiB, 1024 * MiB, 4096 * MiB, 8192 * MiB)


def reset_peak(pid: int) -> None:
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS


def paced_backup(control: str) -> tuple[dict, int]:
    """`tzero backup -o -` read at PACE_BYTES_S; returns its JSON summary and its peak RSS (KiB)."""
    err = open(os.path.join(workdir("run"), "paced.err"), "w+")
    proc = subprocess.Popen([*TZERO, "backup", "-s", control, "-o", "-", "--json", "--no-progress",
                             "--host-memory", str(HOST), "--spill-dir", workdir("spill")],
                            stdout=subprocess.PIPE, stderr=err, cwd=REPO)
    started = time.monotonic()
    got = 0
    while data := proc.stdout.read(1 << 20):
        got += len(data)
        ahead = got / PACE_BYTES_S - (time.monotonic() - started)
        if ahead > 0:
            time.sleep(ahead)
    _, status, usage = os.wait4(proc.pid, 0)
    err.seek(0)
    text = err.read()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"paced backup failed: {text.strip()[-2000:]}")
    return json.loads(text.strip().splitlines()[-1]), usage.ru_maxrss


def memory(stopper) -> dict:
    path = image("w", 1024 * MiB, seed=7)
    sub = stopper.add(serve("mem", {"w": path}, "--side-memory", str(SIDE), "--side-dir", workdir("spill")))
    plugin = child_pid(sub.proc.pid, "nbdkit")
    reset_peak(plugin)
    fio = subprocess.Popen(["fio", "--name=overwrite", "--ioengine=nbd", f"--uri={sub.uri('w')}", "--rw=randwrite",
                            "--bs=64k", "--iodepth=4", "--time_based", "--runtime=120s", "--output-format=json"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=workdir("run"))
    try:
        time.sleep(0.5)
        summary, controller_kib = paced_backup(sub.control)
    finally:
        fio.terminate()
        fio.wait(30)
    plugin_kib = rss_kib(plugin)
    cow = summary["chunks_cow"] * 64 * 1024
    return {
        "side_memory": SIDE, "host_memory": HOST, "export_bytes": 1024 * MiB,
        "cow_bytes": cow, "cow_vs_side_memory": cow / SIDE,
        "side_peak_bytes": summary.get("side_peak_bytes"), "spilled_bytes": summary.get("spilled_bytes"),
        "plugin_peak_rss_mib": plugin_kib / 1024, "plugin_bound_mib": (SIDE + SLACK) / MiB,
        "plugin_within_bound": plugin_kib * 1024 <= SIDE + SLACK,
        "controller_peak_rss_mib": controller_kib / 1024, "controller_bound_mib": (HOST + SLACK) / MiB,
        "controller_within_bound": controller_kib * 1024 <= HOST + SLACK,
        "backup": {k: summary[k] for k in ("elapsed_s", "chunks_cow", "bytes") if k in summary},
    }


def mem_available() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def growth(stopper) -> list[dict]:
    out = []
    for size in GROWTH:
        name = {256 * MiB: "p1", 1024 * MiB: "w"}.get(size, f"g{size // MiB}")
        if name.startswith("g") and mem_available() < 2.5 * size:
            out.append({"export_bytes": size, "skipped": f"only {mem_available() >> 20} MiB of memory available"})
            continue
        say(f"growth: {size >> 20} MiB")
        path = image(name, size, seed=size // MiB)
        sub = serve(f"grow{size >> 20}", {name: path})
        try:
            plugin = child_pid(sub.proc.pid, "nbdkit")
            before = rss_kib(plugin)
            os.sync()  # an image written by an earlier phase: no writeback left for the backup's flush
            s = backup([sub.control])
            t = nbdcopy_null(sub.uri(name))
            out.append({"export_bytes": size, "elapsed_s": s["elapsed_s"], "wall_s": s["wall_s"],
                        "mib_s": size / MiB / s["elapsed_s"], "nbdcopy_s": t, "vs_nbdcopy": t / s["elapsed_s"],
                        "controller_peak_rss_mib": s["controller_maxrss_kib"] / 1024,
                        "plugin_rss_before_mib": before / 1024, "plugin_peak_rss_mib": rss_kib(plugin) / 1024})
        finally:
            sub.stop()
            if name.startswith("g"):
                drop_image(name)
    return out


def main() -> int:
    with Stopper() as stopper:
        say("memory: overwriting during a paced backup with --side-memory 64M --host-memory 64M")
        mem = memory(stopper)
        stopper.__exit__()
        grow = growth(stopper)
    write_result("memory", {"bench": "memory", "note": __doc__.split("\n\n")[1], "memory": mem, "growth": grow})
    say(json.dumps(mem))
    for g in grow:
        say(json.dumps(g))
    return 0


if __name__ == "__main__":
    sys.exit(main())
