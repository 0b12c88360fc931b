"""Write cost and backup speed on one 1 GiB image: tzero vs qemu-storage-daemon vs the limits.

Every server runs over the same image file at once (only one is used at a time):
tzero's subsystem, qemu-storage-daemon (its backup job run twice: as shipped, and
with x-perf max-workers=1) and nbdkit's C `file` plugin (the NBD serving limit).

Write cost, fio (FIO_NOTE in common.py) on the live export of each system:
  none     no backup;
  held     a backup session open but not copying: tzero's session held through the
           control protocol, QSD's job started at one byte a second, so every first
           write to a chunk costs a copy-before-write and nothing else runs;
  copying  while a full backup runs (the backup's speed under load comes from here);
  after    once the backup has finished.
Backup speed, idle: `tzero backup`, QSD's job both ways, `nbdcopy URI null:` reading
tzero's live export (the read limit) and nbdkit-file's.

Two kinds of backup target. Thrown away: tzero's stream to /dev/null, QSD's job into
`null-co` (QSD's copy-before-write then costs only the read). Written: tzero's stream
over a file (`-o -` redirected), QSD's job into a raw file; both files are made once per
run and overwritten in place, neither system syncs them. The systems that write to a
file run only the phases where the target matters (held, copying).

Before the rounds, every system runs one held phase that is not counted (warm_up says
why); its IOPS are kept as the cost of the first backup after a start.

Rounds interleave the systems (tzero, QSD default, QSD max-workers=1, the same three
writing files, nbdkit-file, then again) so that whatever else loads the machine hits
them alike.
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import (  # noqa: E402
    FIO_NOTE,
    FioLoad,
    MiB,
    Stopper,
    backup,
    child_pid,
    fio,
    image,
    iops_between,
    nbdcopy_null,
    say,
    serve,
    workdir,
    write_result,
)
from bench.qsd import StorageDaemon  # noqa: E402
from controller.backup.group import ConsistencyGroup  # noqa: E402

SIZE = 1024 * MiB
FIO_S = 5
ROUNDS = 2
SYSTEMS = ("tzero", "qsd-default", "qsd-mw1", "tzero-file", "qsd-default-file", "qsd-mw1-file")
TARGET_PHASES = ("held", "copying")  # all a file target changes


class NbdkitFile:
    """nbdkit's C file plugin over PATH at nbd+unix:///?socket=SOCK (its one export)."""

    def __init__(self, path: str):
        import subprocess

        self.socket = os.path.join(workdir("run"), "nbdkit-file.sock")
        if os.path.exists(self.socket):
            os.unlink(self.socket)
        self.proc = subprocess.Popen(["nbdkit", "-f", "--exit-with-parent", "-U", self.socket, "file", f"file={path}"])
        deadline = time.monotonic() + 30
        while not os.path.exists(self.socket):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("nbdkit file plugin did not start")
            time.sleep(0.02)
        self.uri = f"nbd+unix:///?socket={self.socket}"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


class TzeroSystem:
    def __init__(self, sub, to: str | None = None):
        self.sub = sub
        self.to = to  # a target file, or None: the stream goes to /dev/null
        self.uri = sub.uri("w")
        self.group = None

    def hold(self) -> None:
        self.group = ConsistencyGroup([self.sub.control])
        self.group.connect()
        self.group.open()
        self.group.freeze_and_thaw()
        self.group.start_heartbeat()

    def release(self) -> dict:
        stats = next(iter(self.group.close().values()))
        self.group = None
        return {"chunks_cow": stats["chunks_cow"], "side_peak_bytes": stats["side_peak_bytes"]}

    def backup(self) -> dict:
        started = time.time()
        s = backup([self.sub.control], to=self.to)
        return {"started": started, "ended": time.time(), "elapsed_s": s["elapsed_s"], "wall_s": s["wall_s"],
                "chunks_cow": s["chunks_cow"]}


class QsdSystem:
    def __init__(self, daemon: StorageDaemon, max_workers, to_file: bool = False):
        self.daemon = daemon
        self.max_workers = max_workers
        self.to_file = to_file
        self.uri = daemon.uri("w")

    def hold(self) -> None:
        self.daemon.start_backup(["w"], self.max_workers, held=True, to_file=self.to_file)

    def release(self) -> dict:
        self.daemon.cancel_backup(["w"])
        return {}

    def backup(self) -> dict:
        r = self.daemon.start_backup(["w"], self.max_workers, to_file=self.to_file)
        ended = self.daemon.wait_backup(["w"])
        # Its job is the whole backup: the QMP round trip starts it, the completion event ends it.
        return {"started": r["sent"], "ended": ended, "elapsed_s": ended - r["sent"], "wall_s": ended - r["sent"]}


def phases(system, tag: str, only=("none", "held", "copying", "after")) -> dict:
    out = {}
    if "none" in only:
        out["none"] = fio(system.uri, FIO_S)
    system.hold()
    try:
        out["held"] = fio(system.uri, FIO_S)
    finally:
        out["held"].update(system.release())
    load = FioLoad(system.uri, tag)
    try:
        b = system.backup()
        time.sleep(0.5)
    finally:
        r = load.stop()
    samples = r.pop("samples")
    r["iops_during_backup"] = iops_between(samples, b["started"], b["ended"])
    r["iops_before_backup"] = iops_between(samples, b["started"] - 0.4, b["started"])
    r["backup"] = b
    r["backup_mib_s"] = SIZE / MiB / b["elapsed_s"]
    out["copying"] = r
    if "after" in only:
        out["after"] = fio(system.uri, FIO_S)
    return out


def idle_speed(systems: dict, nbdkit_file: NbdkitFile) -> dict:
    """Each system's backup of the idle image. Every run starts from a sync: the write phases
    before leave hundreds of MiB dirty, and tzero flushes its exports once a session starts
    (durable time zero) while QSD's job does not, so without it the first system after a
    write phase would pay for that phase's writeback."""
    out = {}
    for name, system in systems.items():
        os.sync()
        b = system.backup()
        out[name] = {"elapsed_s": b["elapsed_s"], "wall_s": b["wall_s"], "mib_s": SIZE / MiB / b["elapsed_s"]}
    for name, uri in (("nbdcopy-tzero", systems["tzero"].uri), ("nbdcopy-nbdkit-file", nbdkit_file.uri)):
        os.sync()
        t = nbdcopy_null(uri)
        out[name] = {"wall_s": t, "mib_s": SIZE / MiB / t}
    return out


def mean(xs) -> float:
    xs = list(xs)
    return sum(xs) / len(xs) if xs else 0.0


def warm_up(system) -> float:
    """One held phase that does not count, so the rounds measure the systems rather than the host.

    The first session of a freshly started system saves into pages nobody touched yet (tzero's
    side store, QSD's bounce buffers), which costs a page fault per page here, far more than
    on most hosts (bench/common.py). Its IOPS are kept in the results: what the first backup
    after a start costs."""
    system.hold()
    try:
        return fio(system.uri, FIO_S)["iops"]
    finally:
        system.release()


def phases_of(name: str) -> tuple[str, ...]:
    return TARGET_PHASES if name.endswith("-file") else ("none", "held", "copying", "after")


def summarise(name: str, runs: list, speed: list, none_iops: float) -> dict:
    """Means over rounds (IOPS), worst over rounds (latency); held and copying against NONE_IOPS
    (the system's own none, or its thrown-away sibling's for a file target)."""
    out = {f"iops_{ph}": mean(r[ph]["iops"] for r in runs) for ph in phases_of(name) if ph != "copying"}
    out["iops_copying"] = mean(r["copying"]["iops_during_backup"] for r in runs)
    out["iops_before_copying"] = mean(r["copying"]["iops_before_backup"] for r in runs)
    for ph in phases_of(name):
        out[f"p99_ms_{ph}"] = max(r[ph]["lat_p99_ms"] for r in runs)
        out[f"max_ms_{ph}"] = max(r[ph]["lat_max_ms"] for r in runs)
    out["backup_mib_s_under_load"] = mean(r["copying"]["backup_mib_s"] for r in runs)
    out["copy_s"] = mean(r["copying"]["backup"]["elapsed_s"] for r in runs)
    out["backup_mib_s_idle"] = SIZE / MiB * len(speed) / sum(s[name]["elapsed_s"] for s in speed)
    out["held_vs_none"] = out["iops_held"] / none_iops
    out["copying_vs_none"] = out["iops_copying"] / none_iops
    return out


def main() -> int:
    path = image("w", SIZE, seed=7)
    targets = {"tzero": image("w-tzero.target", SIZE + 64 * MiB), "qsd": image("w-qsd.target", SIZE)}
    result = {"bench": "writecost", "export_bytes": SIZE, "fio": FIO_NOTE, "fio_seconds": FIO_S, "rounds": ROUNDS,
              "order": "interleaved by round: " + ", ".join(SYSTEMS) + ", nbdkit-file, then again",
              "note": "Thrown away: tzero's stream to /dev/null, QSD's job into null-co. To a file: tzero's "
                      "stream over a file (`-o -` redirected), QSD's job into a raw file node; both files made "
                      "once per run and overwritten in place, neither synced"}
    per = {k: [] for k in SYSTEMS}
    speed = []
    file_iops = []
    with Stopper() as stopper:
        sub = stopper.add(serve("wc", {"w": path}))
        daemon = stopper.add(StorageDaemon(workdir("run"), "qsd-wc", {"w": path}, log=open(os.devnull, "w"),
                                           file_targets={"w": targets["qsd"]}))
        nbdkit_file = stopper.add(NbdkitFile(path))
        systems = {"tzero": TzeroSystem(sub), "qsd-default": QsdSystem(daemon, None), "qsd-mw1": QsdSystem(daemon, 1),
                   "tzero-file": TzeroSystem(sub, to=targets["tzero"]),
                   "qsd-default-file": QsdSystem(daemon, None, to_file=True),
                   "qsd-mw1-file": QsdSystem(daemon, 1, to_file=True)}
        result["plugin_pid"] = child_pid(sub.proc.pid, "nbdkit")
        result["warm_up_held_iops"] = {name: warm_up(system) for name, system in systems.items()}
        for rnd in range(ROUNDS):
            for name in SYSTEMS:
                say(f"write cost: {name}, round {rnd + 1}")
                per[name].append(phases(systems[name], f"{name}-{rnd}", phases_of(name)))
            say(f"write cost: nbdkit-file, round {rnd + 1}; idle backup speed")
            file_iops.append(fio(nbdkit_file.uri, FIO_S))
            speed.append(idle_speed(systems, nbdkit_file))
    summary = {}
    for name in SYSTEMS:  # the thrown-away systems come first: their none serves their file siblings
        own = name.removesuffix("-file")
        none = mean(r["none"]["iops"] for r in per[own])
        summary[name] = summarise(name, per[name], speed, none)
    summary["nbdkit-file"] = {"iops_none": mean(r["iops"] for r in file_iops),
                              "p99_ms_none": max(r["lat_p99_ms"] for r in file_iops),
                              "max_ms_none": max(r["lat_max_ms"] for r in file_iops)}
    for name in ("nbdcopy-tzero", "nbdcopy-nbdkit-file"):
        summary[name] = {"mib_s": SIZE / MiB * ROUNDS / sum(s[name]["wall_s"] for s in speed)}
    summary["tzero"]["backup_mib_s_idle_wall"] = SIZE / MiB * ROUNDS / sum(s["tzero"]["wall_s"] for s in speed)
    result["summary"] = summary
    result["runs"] = per
    result["speed_runs"] = speed
    result["nbdkit_file_runs"] = file_iops
    write_result("writecost", result)
    for name, s in summary.items():
        say(f"{name}: " + ", ".join(f"{k} {v:.4g}" for k, v in s.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
