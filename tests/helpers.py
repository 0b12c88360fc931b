"""Shared test plumbing: running tzero, serving subsystems, making images."""

import json
import os
import random
import signal
import subprocess
import sys
import time

TZERO = [sys.executable, "-m", "controller"]
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tzero(*args, check=True, timeout=300, **kw) -> subprocess.CompletedProcess:
    """Run the tzero CLI; returns the CompletedProcess (text mode)."""
    proc = subprocess.run([*TZERO, *map(str, args)], capture_output=True, text=True, timeout=timeout, cwd=REPO, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"tzero {' '.join(map(str, args))} exited {proc.returncode}:\n{proc.stderr}")
    return proc


def last_json(text: str) -> dict:
    return json.loads(text.strip().splitlines()[-1])


def make_image(path, size: int, seed: int, zero_every: int = 5) -> bytes:
    """An image of SIZE bytes: random 64 KiB pieces, every ZERO_EVERY-th left as a hole."""
    rnd = random.Random(seed)
    piece = 64 << 10
    content = bytearray(size)
    for off in range(0, size, piece):
        if (off // piece) % zero_every != 0:
            n = min(piece, size - off)
            content[off:off + n] = rnd.randbytes(n)
    with open(path, "wb") as f:
        f.truncate(size)
        for off in range(0, size, piece):
            chunk = content[off:off + piece]
            if any(chunk):
                f.seek(off)
                f.write(chunk)
    return bytes(content)


class Subsystem:
    """`tzero serve` in the background, stopped by stop()."""

    def __init__(self, workdir, name: str, exports: dict, *options):
        self.dir = str(workdir)
        self.control = os.path.join(self.dir, f"{name}.ctl")
        self.socket = os.path.join(self.dir, f"{name}.sock")
        self.pidfile = os.path.join(self.dir, f"{name}.pid")
        self.log = open(os.path.join(self.dir, f"{name}.log"), "w+")
        specs = [f"{n}={p}" for n, p in exports.items()]
        self.proc = subprocess.Popen(
            [*TZERO, "serve", "--control", self.control, "--socket", self.socket, "--pidfile", self.pidfile,
             *map(str, options), *specs],
            stdout=self.log, stderr=subprocess.STDOUT, cwd=REPO)
        deadline = time.monotonic() + 60
        while not os.path.exists(self.pidfile):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"tzero serve did not start:\n{self.output()}")
            time.sleep(0.05)

    def uri(self, export: str) -> str:
        return f"nbd+unix:///{export}?socket={self.socket}"

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def status(self) -> dict:
        return last_json(tzero("status", self.control, "--json").stdout)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode


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
