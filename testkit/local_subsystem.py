"""Running `tzero serve` as a child process on this host: for the demo, tests and benchmarks."""

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from typing import IO

START_TIMEOUT_S = 60.0


class LocalSubsystem:
    """A storage subsystem served by a `tzero serve` child; stop() ends it."""

    def __init__(self, workdir: str | os.PathLike[str], name: str, exports: Mapping[str, str | os.PathLike[str]],
                 *options: object, log: IO[str] | None = None):
        self.dir = str(workdir)
        self.control = os.path.join(self.dir, f"{name}.ctl")
        self.socket = os.path.join(self.dir, f"{name}.sock")
        self.pidfile = os.path.join(self.dir, f"{name}.pid")
        specs = [f"{n}={p}" for n, p in exports.items()]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "controller", "serve", "--control", self.control, "--socket", self.socket,
             "--pidfile", self.pidfile, *map(str, options), *specs],
            stdout=log, stderr=subprocess.STDOUT if log else None)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not os.path.exists(self.pidfile):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"tzero serve for {name} did not start")
            time.sleep(0.05)

    def uri(self, export: str) -> str:
        return f"nbd+unix:///{export}?socket={self.socket}"

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode
