"""Plumbing shared by the benchmarks: work files, servers, clients, statistics.

Work files are allocated once per run and overwritten in place. On these machines
page cache that was freed goes back to the host, and touching it again runs an
order of magnitude slower than touching cached pages: a benchmark that creates
and deletes its images measures the host, not the code. So every image and
target lives in one work folder (BENCH_DIR, default /var/tmp/tzero-bench), is
created at its size the first time, and is rewritten in place after that.
"""

import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from testkit.local_subsystem import Listen, LocalSubsystem  # noqa: E402

WORK = os.environ.get("BENCH_DIR", "/var/tmp/tzero-bench")
RESULTS = os.path.join(REPO, "bench", "results")
TZERO = [sys.executable, "-m", "controller"]
MiB = 1 << 20
FILL_PIECE = 4 * MiB


def say(text: str) -> None:
    print(f"bench: {text}", file=sys.stderr, flush=True)


def workdir(*parts: str) -> str:
    path = os.path.join(WORK, *parts)
    os.makedirs(path, exist_ok=True)
    return path


_filled: dict[str, int] = {}  # images written in this process: path -> size


def image(name: str, size: int, seed: int = 0) -> str:
    """WORK/img/NAME.img: exactly SIZE bytes of non-zero pseudo-random data, rewritten in place
    the first time this process asks for it (so a whole `make bench` writes it once).

    Every 4 MiB piece differs (its first bytes carry the seed and the offset), so no
    layer can deduplicate or skip it; nothing is ever a hole."""
    import random

    path = os.path.join(workdir("img"), f"{name}.img")
    if _filled.get(path) == size:
        return path
    base = random.Random(seed).randbytes(FILL_PIECE)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        if os.fstat(fd).st_size != size:
            os.ftruncate(fd, size)
            os.posix_fallocate(fd, 0, size)
        piece = bytearray(base)
        for off in range(0, size, FILL_PIECE):
            piece[:16] = seed.to_bytes(8, "little") + off.to_bytes(8, "little")
            n = min(FILL_PIECE, size - off)
            os.pwrite(fd, memoryview(piece)[:n], off)
        os.fdatasync(fd)
    finally:
        os.close(fd)
    _filled[path] = size
    return path


def drop_image(name: str) -> None:
    """Remove a large image once done with it, so its page cache does not crowd the others."""
    path = os.path.join(workdir("img"), f"{name}.img")
    _filled.pop(path, None)
    _remove(path)


def serve(name: str, exports: dict, *options, folder: str | None = None,
          listen: Listen | None = None) -> LocalSubsystem:
    """A `tzero serve` child whose log goes to FOLDER/NAME.log (on TCP with LISTEN)."""
    folder = folder or workdir("run")
    for suffix in (".ctl", ".sock", ".pid"):
        _remove(os.path.join(folder, name + suffix))
    log = open(os.path.join(folder, f"{name}.log"), "w")
    return LocalSubsystem(folder, name, exports, *options, log=log, listen=listen)


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def backup(controls: list[str], *extra, to: str | None = None) -> dict:
    """`tzero backup -o -`, the stream thrown away, or written over the file TO from its start
    (made by image(), so no run pays for fresh pages); returns its JSON summary plus wall_s and
    controller_maxrss_kib (the peak resident memory of the tzero backup process)."""
    cmd = [*TZERO, "backup", *[a for c in controls for a in ("-s", c)], "-o", "-", "--json", "--no-progress", *extra]
    out = subprocess.DEVNULL if to is None else os.open(to, os.O_WRONLY)
    with open(os.path.join(workdir("run"), "backup.err"), "w+") as err:
        started = time.monotonic()
        try:
            proc = subprocess.Popen(cmd, stdout=out, stderr=err, cwd=REPO)
        finally:
            if to is not None:
                os.close(out)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.monotonic() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        text = err.read()
    if proc.returncode != 0:
        raise RuntimeError(f"tzero backup failed ({proc.returncode}): {text.strip()[-2000:]}")
    summary = json.loads(text.strip().splitlines()[-1])
    summary["wall_s"] = wall
    summary["controller_maxrss_kib"] = usage.ru_maxrss
    return summary


def nbdcopy_null(uri: str, *extra) -> float:
    """Seconds nbdcopy takes to read URI to null:."""
    started = time.monotonic()
    subprocess.run(["nbdcopy", *extra, uri, "null:"], check=True)
    return time.monotonic() - started


def nbdcopy_null_all(uris: list[str], *extra) -> float:
    """Seconds for one nbdcopy per URI, all at once, to read them to null:."""
    started = time.monotonic()
    procs = [subprocess.Popen(["nbdcopy", *extra, uri, "null:"]) for uri in uris]
    if any(p.wait() != 0 for p in procs):
        raise RuntimeError(f"nbdcopy of {uris} failed")
    return time.monotonic() - started


FIO_JOB = ["--name=bench", "--ioengine=nbd", "--rw=randwrite", "--bs=4k", "--iodepth=16", "--randrepeat=0",
           "--norandommap", "--output-format=json"]
FIO_NOTE = "fio nbd engine, randwrite, bs=4k, iodepth=16, one job"


def _fio_result(stdout: str) -> dict:
    doc = json.loads(stdout[stdout.index("{"):])
    job = doc["jobs"][0]
    side = job["write"]
    pct = side["clat_ns"].get("percentile", {})
    return {
        "iops": side["iops"],
        "lat_p50_ms": pct.get("50.000000", 0) / 1e6,
        "lat_p99_ms": pct.get("99.000000", 0) / 1e6,
        "lat_max_ms": side["clat_ns"]["max"] / 1e6,
        "ios": side["total_ios"],
        "runtime_s": job["job_runtime"] / 1000,
        "ended_epoch": doc["timestamp_ms"] / 1000,
    }


def fio(uri: str, runtime_s: float) -> dict:
    """fio (FIO_NOTE) against URI for RUNTIME_S; IOPS and write latency (ms)."""
    proc = subprocess.run(["fio", *FIO_JOB, f"--uri={uri}", "--time_based", f"--runtime={runtime_s}s"],
                          capture_output=True, text=True, cwd=workdir("run"))
    if proc.returncode != 0:
        raise RuntimeError(f"fio failed: {proc.stderr.strip()[-2000:]}")
    return _fio_result(proc.stdout)


class FioLoad:
    """fio (FIO_NOTE) in the background with a 100 ms IOPS log, until stop()."""

    def __init__(self, uri: str, tag: str, limit_s: float = 120, extra: tuple[str, ...] = ()):
        """EXTRA: more fio options (e.g. --size=64M: only the first 64 MiB)."""
        self.prefix = os.path.join(workdir("run"), f"fio-{tag}")
        self.log = f"{self.prefix}_iops.1.log"
        _remove(self.log)
        self.proc = subprocess.Popen(["fio", *FIO_JOB, *extra, f"--uri={uri}", "--time_based", f"--runtime={limit_s}s",
                                      f"--write_iops_log={self.prefix}", "--log_avg_msec=100"],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=workdir("run"))
        time.sleep(0.5)  # connected and running

    def stop(self) -> dict:
        """Stop fio; its summary plus `iops_between(t0, t1)` over wall-clock times."""
        self.proc.send_signal(signal.SIGINT)
        out, err = self.proc.communicate(60)
        if "{" not in out:
            raise RuntimeError(f"fio failed: {err.strip()[-2000:]}")
        r = _fio_result(out)
        started = r["ended_epoch"] - r["runtime_s"]
        samples = []
        with open(self.log) as f:
            for line in f:
                ms, value = line.split(",")[:2]
                samples.append((started + int(ms) / 1000, float(value)))
        r["samples"] = samples
        return r


def iops_between(samples, t0: float, t1: float) -> float:
    """Mean IOPS over [T0, T1] from 100 ms samples (each ends at its time), weighted by overlap,
    so that a window shorter than a sample still gets a figure."""
    done = span = 0.0
    for t, v in samples:
        overlap = min(t, t1) - max(t - 0.1, t0)
        if overlap > 0:
            done += v * overlap
            span += overlap
    return done / span if span else 0.0


def percentile(values, p: float) -> float:
    """P-th percentile (0-100) by linear interpolation between closest ranks."""
    xs = sorted(values)
    if not xs:
        return 0.0
    k = (len(xs) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def rss_kib(pid: int) -> int:
    """Peak resident set (VmHWM) of PID in KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def child_pid(parent: int, name: str) -> int | None:
    """The first child of PARENT whose command name is NAME (e.g. nbdkit under tzero serve)."""
    try:
        with open(f"/proc/{parent}/task/{parent}/children") as f:
            kids = [int(x) for x in f.read().split()]
    except FileNotFoundError:
        return None
    for k in kids:
        try:
            with open(f"/proc/{k}/comm") as f:
                if f.read().strip() == name:
                    return k
        except FileNotFoundError:
            pass
    return None


def version_of(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True).stdout
        return out.strip().splitlines()[0] if out.strip() else "?"
    except FileNotFoundError:
        return "missing"


def machine() -> dict:
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    with open("/proc/meminfo") as f:
        mem_kib = int(f.readline().split()[1])
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kib / (1 << 20), 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "nbdkit": version_of(["nbdkit", "--version"]),
        "nbdcopy": version_of(["nbdcopy", "--version"]),
        "fio": version_of(["fio", "--version"]),
        "qemu-storage-daemon": version_of(["qemu-storage-daemon", "--version"]),
        "load_at_start": os.getloadavg(),
    }


def write_result(name: str, data: dict) -> str:
    os.makedirs(RESULTS, exist_ok=True)
    path = os.path.join(RESULTS, f"{name}.json")
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1, sort_keys=False)
        f.write("\n")
    os.replace(tmp, path)
    return path


def need(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        raise SystemExit(f"bench: missing {', '.join(missing)} (make bench installs them)")


class Stopper:
    """Stops servers on exit, also on SIGTERM."""

    def __init__(self):
        self.items = []
        signal.signal(signal.SIGTERM, lambda *a: sys.exit(143))

    def add(self, item):
        self.items.append(item)
        return item

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for item in reversed(self.items):
            try:
                item.stop()
            except Exception as e:  # keep stopping the rest
                say(f"stopping {item}: {e!r}")
        self.items.clear()


class Writers:
    """WRITERS dependent-writer processes (bench/writer.py) over URIS; stop() returns their logs:
    one list of (submitted, acked) wall-clock pairs per writer."""

    def __init__(self, uris: list[str], writers: int, tag: str):
        self.logs = [os.path.join(workdir("run"), f"writer-{tag}-{i}.log") for i in range(writers)]
        for path in self.logs:
            _remove(path)
        script = os.path.join(REPO, "bench", "writer.py")
        self.procs = [subprocess.Popen([sys.executable, script, str(i), str(writers), self.logs[i], *uris],
                                       stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
                      for i in range(writers)]
        for p in self.procs:
            if p.stdout.readline().strip() != "ready":
                self.stop()
                raise RuntimeError("a writer did not start")

    def stop(self) -> list[list[tuple[float, float]]]:
        import array

        for p in self.procs:
            if p.stdin and not p.stdin.closed:
                p.stdin.close()
        out = []
        for p, path in zip(self.procs, self.logs, strict=False):
            if p.wait(60) != 0:
                raise RuntimeError(f"writer {path} exited {p.returncode}")
            a = array.array("d")
            with open(path, "rb") as f:
                a.frombytes(f.read())
            out.append(list(zip(a[0::2], a[1::2], strict=False)))
        return out


def stall_ms(logs, t0: float, t1: float) -> float:
    """The longest latency (ms) of any write in flight at some moment of [T0, T1] (wall clock)."""
    worst = 0.0
    for log in logs:
        for submitted, acked in log:
            if submitted <= t1 and acked >= t0:
                worst = max(worst, acked - submitted)
    return worst * 1000


def latencies_ms(logs, t0: float = float("-inf"), t1: float = float("inf")) -> list[float]:
    """Latencies (ms) of the writes submitted within [T0, T1]."""
    return [(a - s) * 1000 for log in logs for s, a in log if t0 <= s <= t1]
