"""Boot a throwaway QEMU guest that runs one script, and bring its verdict back.

    from vm.guest import Disk, Guest, run_guest

    verdict = run_guest("echo @@tzero ANSWER 42", job_dir=tmp_path, timeout=60)
    assert verdict.status == 0 and verdict.value("ANSWER") == "42"

    with Guest(script, job_dir=tmp_path, disks=[Disk("data", nbd_socket=sock)]) as guest:
        guest.wait_for("READY")          # the guest printed "@@tzero READY"
        ...                              # the host acts while the guest runs
        verdict = guest.wait()

The guest (see vm/init) sees the host's root read-only at /, so the repo, .venv, python3,
nbdkit and the tools run in it at their host paths. Writable: tmpfs on /tmp, /run and
/dev/shm, and the job directory, JOB_DIR on the host and /run/job in the guest, a 9p share
without page cache. The script is copied to JOB_DIR/script and runs with /tmp as working
directory and stdin from /dev/null; `env` entries reach it as environment variables.

Results come back two ways. Markers: a console line "@@tzero NAME [VALUE]" becomes a
Marker, seen live through markers()/wait_for() and kept in the Verdict; BOOTED, EXIT and
INITFAIL are the init's own. Files: whatever the script writes under /run/job is in
JOB_DIR on the host, complete by the time it prints its next marker.

Disks are virtio-blk devices named by serial (at most 20 characters): in the guest,
/dev/disk/by-id/virtio-SERIAL links to the /dev/vdX that carries it. A Disk is either a
raw image file or an export of an NBD server on a unix socket, reached through QEMU's own
NBD client.

Every guest runs under a time budget (timeout seconds from start): past it, QEMU is
killed and GuestTimeout carries the tail of the console log. The log is written as it
arrives to JOB_DIR/console.log. Stdlib only.
"""

import json
import os
import queue
import re
import shlex
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_KIT = REPO / ".cache" / "vm"
QEMU = "qemu-system-x86_64"
MARK = "@@tzero"
_MARKER = re.compile(re.escape(MARK) + r" ([A-Za-z0-9_.:-]+)(?: (.*))?$")
_KERNEL_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=[^\s\"]*")
LOG_TAIL_LINES = 40


class GuestError(Exception):
    """The guest did not run its script to the end: QEMU failed, init failed, or it died."""


class GuestTimeout(GuestError):
    """The guest overran its time budget and was killed."""


class KitMissing(GuestError):
    """There is no boot kit: run `make vm`."""


@dataclass(frozen=True)
class Disk:
    """A virtio-blk disk for the guest, found there as /dev/disk/by-id/virtio-SERIAL.

    Give exactly one of `path` (a raw image file on the host) or `nbd_socket` (the unix
    socket of an NBD server; `nbd_export` names the export).
    """

    serial: str
    path: str | os.PathLike | None = None
    nbd_socket: str | os.PathLike | None = None
    nbd_export: str = ""
    read_only: bool = False

    def __post_init__(self):
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,20}", self.serial):
            raise ValueError(f"disk serial {self.serial!r}: 1-20 of [A-Za-z0-9_.-]")
        if (self.path is None) == (self.nbd_socket is None):
            raise ValueError(f"disk {self.serial}: give exactly one of path or nbd_socket")

    def qemu_args(self, node: str) -> list[str]:
        ro = ",read-only=on" if self.read_only else ""
        if self.path is not None:
            path = _qemu_escape(os.path.abspath(self.path))
            backend = f"driver=raw,node-name={node}{ro},file.driver=file,file.filename={path}"
        else:
            sock = _qemu_escape(os.path.abspath(self.nbd_socket))
            export = _qemu_escape(self.nbd_export)
            backend = (f"driver=nbd,node-name={node}{ro},server.type=unix,"
                       f"server.path={sock},export={export}")
        return ["-blockdev", backend,
                "-device", f"virtio-blk-pci,drive={node},serial={self.serial}"]


@dataclass(frozen=True)
class Marker:
    """One "@@tzero NAME VALUE" console line; `at` is seconds since QEMU started."""

    name: str
    value: str
    at: float


@dataclass
class Verdict:
    """What a guest run came to. `status` is the script's exit status."""

    status: int
    markers: list[Marker]
    log_path: Path
    job_dir: Path
    wall_seconds: float
    boot_seconds: float = field(init=False)

    def __post_init__(self):
        booted = [m.at for m in self.markers if m.name == "BOOTED"]
        self.boot_seconds = booted[0] if booted else float("nan")

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def values(self, name: str) -> list[str]:
        return [m.value for m in self.markers if m.name == name]

    def value(self, name: str) -> str:
        """The value of the one marker NAME; KeyError if it is missing or repeated."""
        found = self.values(name)
        if len(found) != 1:
            raise KeyError(f"marker {name}: expected 1, got {len(found)}")
        return found[0]


def _qemu_escape(text: str) -> str:
    """QEMU option values escape a comma by doubling it."""
    return str(text).replace(",", ",,")


def kit_dir() -> Path:
    return Path(os.environ.get("TZERO_VM_KIT", DEFAULT_KIT))


def kit_ready(kit: Path | None = None) -> bool:
    kit = kit or kit_dir()
    return all((kit / name).is_file() for name in ("vmlinuz", "initrd.img", "kit.json"))


def qemu_available() -> bool:
    return any(os.access(os.path.join(d, QEMU), os.X_OK)
               for d in os.environ.get("PATH", "/usr/bin").split(os.pathsep))


class Guest:
    """One QEMU guest running one script. Use as a context manager: leaving it kills QEMU.

    Threads: a reader thread owns QEMU's stdout; it appends each console line to the log
    and queues each marker. markers(), wait_for() and wait() consume that queue and belong
    to the caller's thread only.
    """

    def __init__(self, script: str | os.PathLike, *, job_dir: str | os.PathLike,
                 disks=(), env: dict | None = None, timeout: float = 120.0,
                 memory: str = "1G", cpus: int = 2, qemu_args=(), kit: Path | None = None):
        """SCRIPT is the text of a script, or the Path of a host file holding one.

        Text without a "#!" line is run by /bin/sh. ENV values must be single kernel
        command-line words (no spaces or quotes). QEMU_ARGS are appended as they are.
        """
        self.kit = Path(kit or kit_dir())
        if not kit_ready(self.kit):
            raise KitMissing(f"no boot kit in {self.kit}: run `make vm`")
        self.job_dir = Path(job_dir).resolve()
        self.job_dir.mkdir(parents=True, exist_ok=True)
        self.disks = list(disks)
        self.env = dict(env or {})
        self.timeout = timeout
        self.memory = memory
        self.cpus = cpus
        self.extra = list(qemu_args)
        self.log_path = self.job_dir / "console.log"
        self._write_script(script)
        self._queue: queue.Queue = queue.Queue()
        self._markers: list[Marker] = []
        self._proc = None
        self._reader = None
        self._start = None
        self._status = None

    def _write_script(self, script) -> None:
        text = Path(script).read_text() if isinstance(script, os.PathLike) else script
        if not text.startswith("#!"):
            text = "#!/bin/sh\n" + text
        path = self.job_dir / "script"
        path.write_text(text)
        path.chmod(0o755)

    def command(self) -> list[str]:
        """The QEMU command line this guest runs."""
        words = {**self.env, "tz_script": "/run/job/script", "tz_repo": str(REPO)}
        for name, value in words.items():
            if not _KERNEL_WORD.fullmatch(f"{name}={value}"):
                raise ValueError(f"env {name}={value!r} is not one kernel command-line word")
        append = " ".join(["console=ttyS0", "panic=-1", "quiet"]
                          + [f"{k}={v}" for k, v in words.items()])
        argv = [QEMU, "-accel", "tcg,thread=multi", "-cpu", "max", "-smp", str(self.cpus),
                "-m", self.memory, "-nographic", "-no-reboot", "-nic", "none",
                "-kernel", str(self.kit / "vmlinuz"), "-initrd", str(self.kit / "initrd.img"),
                "-append", append,
                "-virtfs", "local,path=/,mount_tag=hostroot,security_model=none,"
                           "readonly=on,multidevs=remap",
                "-virtfs", f"local,path={_qemu_escape(self.job_dir)},mount_tag=job,"
                           "security_model=none,multidevs=remap",
                "-virtfs", f"local,path={_qemu_escape(REPO)},mount_tag=repo,security_model=none,"
                           "readonly=on,multidevs=remap"]
        for i, disk in enumerate(self.disks):
            argv += disk.qemu_args(f"disk{i}")
        return argv + self.extra

    def start(self) -> "Guest":
        argv = self.command()
        log = open(self.log_path, "wb")
        log.write(("# " + shlex.join(argv) + "\n").encode())
        log.flush()
        self._start = time.monotonic()
        try:
            self._proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        except FileNotFoundError:
            log.close()
            raise GuestError(f"{QEMU} is not installed: run `make vm`") from None
        self._reader = threading.Thread(target=self._read_console, args=(log,), daemon=True,
                                        name="guest-console")
        self._reader.start()
        return self

    def _read_console(self, log) -> None:
        """Reader thread: copy the console to the log, queue markers, then None at EOF."""
        with log, self._proc.stdout:
            for raw in self._proc.stdout:
                log.write(raw)
                log.flush()
                line = raw.decode(errors="replace").rstrip("\r\n").replace("\r", "")
                m = _MARKER.search(line)
                if m:
                    at = time.monotonic() - self._start
                    self._queue.put(Marker(m.group(1), (m.group(2) or "").strip(), at))
        self._queue.put(None)

    def _remaining(self) -> float:
        return self._start + self.timeout - time.monotonic()

    def markers(self):
        """Yield markers as the guest prints them, up to and including EXIT.

        Raises GuestTimeout past the budget, GuestError if init failed or the guest died.
        """
        if self._proc is None:
            self.start()
        while self._status is None:
            try:
                marker = self._queue.get(timeout=max(self._remaining(), 0))
            except queue.Empty:
                self.kill()
                raise GuestTimeout(f"guest overran its {self.timeout:g} s budget and was "
                                   f"killed\n{self.log_tail()}") from None
            if marker is None:
                self._proc.wait()
                raise GuestError(f"guest ended without reporting an exit status "
                                 f"(QEMU exit {self._proc.returncode})\n{self.log_tail()}")
            self._markers.append(marker)
            if marker.name == "INITFAIL":
                self.kill()
                raise GuestError(f"guest init failed: {marker.value}\n{self.log_tail()}")
            if marker.name == "EXIT":
                self._status = int(marker.value)
            yield marker

    def wait_for(self, name: str) -> Marker:
        """Block until the guest prints marker NAME; GuestError if it exits first."""
        for marker in self.markers():
            if marker.name == name:
                return marker
        raise GuestError(f"guest exited (status {self._status}) without marker {name}\n"
                         f"{self.log_tail()}")

    def wait(self) -> Verdict:
        """Run the guest to its end and return the verdict."""
        for _ in self.markers():
            pass
        try:
            self._proc.wait(timeout=max(self._remaining(), 5))
        except subprocess.TimeoutExpired:
            self.kill()
            raise GuestTimeout(f"guest reported EXIT but did not power off\n"
                               f"{self.log_tail()}") from None
        self._reader.join()
        return Verdict(self._status, list(self._markers), self.log_path, self.job_dir,
                       time.monotonic() - self._start)

    def kill(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        if self._reader is not None:
            self._reader.join(timeout=5)

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no console log)"
        tail = text.replace("\r", "").splitlines()[-lines:]
        return f"--- last {len(tail)} console lines ({self.log_path}) ---\n" + "\n".join(tail)

    def __enter__(self) -> "Guest":
        if self._proc is None:
            self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.kill()


def run_guest(script, **kwargs) -> Verdict:
    """Boot a guest, run SCRIPT to the end, return the Verdict (see Guest for arguments)."""
    with Guest(script, **kwargs) as guest:
        return guest.wait()


def kit_info(kit: Path | None = None) -> dict:
    return json.loads(((kit or kit_dir()) / "kit.json").read_text())
