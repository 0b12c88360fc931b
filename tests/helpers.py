"""Shared test plumbing: running tzero, serving subsystems, making images."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse

import nbd
import pytest

from testkit.local_subsystem import LocalSubsystem
from testkit.workload import make_image  # noqa: F401  (tests import it from here)

TZERO = [sys.executable, "-m", "controller"]
needs_nbdkit = pytest.mark.skipif(shutil.which("nbdkit") is None, reason="nbdkit not installed")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tzero(*args, check=True, timeout=300, **kw) -> subprocess.CompletedProcess:
    """Run the tzero CLI; returns the CompletedProcess (text mode)."""
    proc = subprocess.run([*TZERO, *map(str, args)], capture_output=True, text=True, timeout=timeout, cwd=REPO, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"tzero {' '.join(map(str, args))} exited {proc.returncode}:\n{proc.stderr}")
    return proc


def last_json(text: str) -> dict:
    return json.loads(text.strip().splitlines()[-1])


class Subsystem(LocalSubsystem):
    """`tzero serve` in the background, its output kept in NAME.log for failure messages."""

    def __init__(self, workdir, name: str, exports: dict, *options, listen=None):
        self.log_path = os.path.join(str(workdir), f"{name}.log")
        self.log = open(self.log_path, "a+")
        try:
            super().__init__(workdir, name, exports, *options, log=self.log, listen=listen)
        except RuntimeError as e:
            raise AssertionError(f"{e}:\n{self.output()}") from None

    def output(self) -> str:
        if not self.log.closed:
            self.log.flush()
        with open(self.log_path) as f:
            return f.read()

    def tls_args(self) -> list[str]:
        return ["--tls-certificates", self.listen.tls] if self.listen and self.listen.tls else []

    def status(self) -> dict:
        return last_json(tzero("status", self.control, "--json", *self.tls_args()).stdout)

    def connect(self, export: str, allocation: bool = False) -> nbd.NBD:
        """A libnbd handle on EXPORT (a live export or a NAME@SESSION view)."""
        h = nbd.NBD()
        if allocation:
            h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
        if self.listen is None:
            h.set_export_name(export)
            h.connect_unix(self.socket)
        else:
            h.set_uri_allow_local_file(True)
            h.connect_uri(self.uri(urllib.parse.quote(export)))
        return h

    def stop(self) -> int:
        code = super().stop()
        self.log.close()
        return code


def wait_for(predicate, timeout: float, what: str):
    """Poll PREDICATE until it returns something true; fail naming WHAT after TIMEOUT seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def accepts_unix(path) -> bool:
    """True once a server listens on unix socket PATH (its file appears at bind, before listen)."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        probe.close()


class BackupServer:
    """`tzero serve-backup BACKUP` in the background, once it serves; stop() ends it."""

    def __init__(self, tmp_path, backup, name="served"):
        self.socket = str(tmp_path / f"{name}.sock")
        self.pidfile = tmp_path / f"{name}.pid"
        self.log = tmp_path / f"{name}.log"
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen([*TZERO, "serve-backup", str(backup), "--socket", self.socket,
                                          "--pidfile", str(self.pidfile)], cwd=REPO, stderr=log)
        wait_for(lambda: self.pidfile.exists() or self.proc.poll() is not None, 60, "serve-backup to start")
        assert self.proc.poll() is None, self.log.read_text()

    def uri(self, name: str) -> str:
        return f"nbd+unix:///{name}?socket={self.socket}"

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(30)


def documented_fields(section: str) -> set[str]:
    """The field names docs/json.md lists in the table under '## SECTION'."""
    with open(os.path.join(REPO, "docs", "json.md")) as f:
        text = f.read()
    body = text.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    return {line.split("`")[1] for line in body.splitlines() if line.startswith("| `")}


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """COUNT distinct TCP ports free on HOST just now (the kernel's choice of unused ones)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    socks = [socket.socket(family, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for s in socks:
            s.bind((host, 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def one_line(stderr: str) -> str:
    """The single `tzero: ...` line a failing command prints (an AssertionError otherwise)."""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tzero: "), f"expected one tzero: line, got {stderr!r}"
    return lines[0]


def paced_backup(cmd: list, out, writes, piece: int = 256 << 10) -> dict:
    """Run backup CMD (writing to -) and copy its stream to OUT slowly, letting writers land a
    few writes (WRITES() counts them) between reads of PIECE bytes, so copy-before-write happens
    mid-copy. Returns the backup's --json summary."""
    err: list[str] = []
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO) as proc, \
            open(out, "wb") as sink:
        reader = threading.Thread(target=lambda: err.append(proc.stderr.read().decode()))
        reader.start()
        while data := proc.stdout.read(piece):
            sink.write(data)
            target, deadline = writes() + 6, time.monotonic() + 5
            while writes() < target and time.monotonic() < deadline:
                time.sleep(0.001)
        status = proc.wait(120)
        reader.join()
    assert status == 0, f"backup failed: {err}"
    return last_json(err[0])
