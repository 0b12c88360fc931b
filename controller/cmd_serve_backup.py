"""tzero serve-backup: serve a backup file read-only over NBD, one export per dataset.

The backup's header, trailer and index are checked here first, so a damaged or
missing file is one line, not an nbdkit traceback; records are checked as they
are read (a damaged one fails that read with EIO). Like `tzero serve`, nbdkit
runs in the foreground; the pidfile appears once the socket serves NBD, and
SIGTERM or SIGINT stops it and removes the socket and the pidfile.
"""

import os
import shutil
import signal
import subprocess
import sys
import time

from controller.cmd_serve import READY_TIMEOUT_S, STOP_TIMEOUT_S, _clear_stale_socket, _remove, _serves_nbd, \
    _write_pidfile
from controller.errors import TzeroError, UsageError
from controller.verify import opened_backup

PLUGIN = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "nbdplugin", "backup_plugin.py")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "serve-backup", help="serve a backup read-only over NBD, one export per dataset",
        description="Serve every dataset of BACKUP as a read-only NBD export named after it, "
                    "e.g. nbd+unix:///NAME?socket=SOCK, reading records through the backup's index. "
                    "Bytes no record holds read as zeros and are reported as holes.")
    p.add_argument("backup", metavar="BACKUP", help="a backup file (seekable; not stdin)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--socket", metavar="SOCK", help="NBD unix socket (default ./tzero-backup.sock)")
    where.add_argument("--port", type=int, metavar="PORT", help="NBD TCP port on loopback instead of a unix socket")
    p.add_argument("--pidfile", metavar="FILE", help="written once the socket serves NBD")
    p.set_defaults(func=run)


def _check(args) -> None:
    """Everything that can be wrong before nbdkit starts, as one line."""
    if shutil.which("nbdkit") is None:
        raise TzeroError("nbdkit is not installed (make setup installs it)")
    if args.backup == "-":
        raise UsageError("serve-backup needs a backup file it can seek in, not standard input")
    with opened_backup(args.backup) as reader:
        reader.read_index()
        if not reader.header.datasets:
            raise UsageError(f"{args.backup} holds no datasets to serve")
    if args.port is not None and not 0 < args.port < 65536:
        raise UsageError(f"--port {args.port}: not a TCP port")


def run(args) -> int:
    _check(args)
    sock = None if args.port else os.path.abspath(args.socket or "tzero-backup.sock")
    where = ["-U", sock] if sock else ["-i", "127.0.0.1", "-p", str(args.port)]
    if sock:
        _clear_stale_socket(sock)
    proc = subprocess.Popen(["nbdkit", "-f", "-r", "--exit-with-parent", *where, "python", PLUGIN,
                             f"backup={os.path.abspath(args.backup)}"])
    stopping = []

    def stop(signum, frame):
        stopping.append(signum)
        proc.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        if _wait_ready(proc, sock, args.port) and args.pidfile:
            _write_pidfile(args.pidfile)
        status = proc.wait()
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
        for path in (sock, args.pidfile):
            if path:
                _remove(path)
    if not stopping and status != 0:
        raise TzeroError(f"nbdkit exited with status {status}")
    return 0


def _wait_ready(proc, sock: str | None, port: int | None) -> bool:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        if _serves_nbd(sock, port):
            return True
        time.sleep(0.05)
    proc.terminate()
    print("tzero: nbdkit did not become ready in time", file=sys.stderr)
    return False
