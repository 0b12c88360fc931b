"""Running `tzero serve` as a child process on this host: for the demo, tests and benchmarks.

On unix sockets by default; on TCP (with TLS when given certificates) with a Listen, and
inside a network namespace when it names one (the tests' stand-in for another host).
"""

import os
import signal
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import IO

from common.endpoint import bracketed

START_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Listen:
    """A subsystem on TCP: the control channel at HOST:CONTROL_PORT, NBD at HOST:NBD_PORT, TLS with
    the certificate directory TLS (None: plaintext, on loopback only), in network namespace NETNS."""

    host: str
    control_port: int
    nbd_port: int
    tls: str | None = None
    netns: str | None = None

    def serve_args(self) -> list[str]:
        args = ["--control", f"{bracketed(self.host)}:{self.control_port}", "--port", str(self.nbd_port)]
        return args + (["--tls-certificates", self.tls] if self.tls else ["--insecure-plaintext-tcp"])


class LocalSubsystem:
    """A storage subsystem served by a `tzero serve` child; stop() ends it, kill() kills it."""

    def __init__(self, workdir: str | os.PathLike[str], name: str, exports: Mapping[str, str | os.PathLike[str]],
                 *options: object, log: IO[str] | None = None, listen: Listen | None = None):
        self.dir = str(workdir)
        self.listen = listen
        # The address a controller gives -s: the unix socket, or HOST:PORT.
        self.control = os.path.join(self.dir, f"{name}.ctl")
        self.socket = os.path.join(self.dir, f"{name}.sock")  # NBD's unix socket (unused with a Listen)
        self.pidfile = os.path.join(self.dir, f"{name}.pid")
        # Its change maps beside its sockets, never in the user's default state directory; the
        # same NAME in the same WORKDIR finds them again after a restart.
        self.state_dir = os.path.join(self.dir, f"{name}.state")
        given = [str(o) for o in options]
        if "--state-dir" not in given and "--no-tracking" not in given:
            options = (*options, "--state-dir", self.state_dir)
        where = ["--control", self.control, "--socket", self.socket]
        prefix: list[str] = []
        if listen is not None:
            where = listen.serve_args()
            self.control = where[1]
            if listen.netns:
                prefix = ["ip", "netns", "exec", listen.netns]
        if os.path.exists(self.pidfile):
            os.unlink(self.pidfile)  # left by a subsystem killed before it could remove it
        specs = [f"{n}={p}" for n, p in exports.items()]
        # A session of its own: kill() takes nbdkit down with it, as a crash of the host would.
        self.proc = subprocess.Popen(
            [*prefix, sys.executable, "-m", "controller", "serve", *where, "--pidfile", self.pidfile,
             *map(str, options), *specs],
            stdout=log, stderr=subprocess.STDOUT if log else None, start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not os.path.exists(self.pidfile):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"tzero serve for {name} did not start")
            time.sleep(0.05)

    def uri(self, export: str) -> str:
        """A URI an application (libnbd, nbdcopy, nbdinfo) reaches EXPORT by."""
        if self.listen is None:
            return f"nbd+unix:///{export}?socket={self.socket}"
        host = f"{bracketed(self.listen.host)}:{self.listen.nbd_port}"
        if self.listen.tls is None:
            return f"nbd://{host}/{export}"
        return f"nbds://{host}/{export}?tls-certificates={urllib.parse.quote(self.listen.tls)}"

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL to the subsystem and its nbdkit at once, as if its host had died."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
