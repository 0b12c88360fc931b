"""tzero serve-backup: serve a backup file read-only over NBD, one export per dataset.

The backup's header, trailer and index are checked here first, so a damaged or
missing file is one line, not an nbdkit traceback; records are checked as they
are read (a damaged one fails that read with EIO). Like `tzero serve`, nbdkit
runs in the foreground; the pidfile appears once the socket serves NBD, and
SIGTERM or SIGINT stops it and removes the socket and the pidfile.
"""

import argparse
import os

from controller.cli.args import Subparsers
from controller.errors import UsageError
from controller.nbd.nbdkit_runner import PLUGIN_DIR, listen_args, require_nbdkit, run_nbdkit, serves_nbd
from controller.restore.verify import opened_backup

PLUGIN = os.path.join(PLUGIN_DIR, "backup_plugin.py")


def register(subparsers: Subparsers) -> None:
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


def _check(args: argparse.Namespace) -> None:
    """Everything that can be wrong before nbdkit starts, as one line."""
    require_nbdkit()
    if args.backup == "-":
        raise UsageError("serve-backup needs a backup file it can seek in, not standard input")
    with opened_backup(args.backup) as reader:
        reader.read_index()
        if not reader.header.datasets:
            raise UsageError(f"{args.backup} holds no datasets to serve")


def run(args: argparse.Namespace) -> int:
    _check(args)
    sock = None if args.port else os.path.abspath(args.socket or "tzero-backup.sock")
    cmd = ["nbdkit", "-f", "-r", "--exit-with-parent", *listen_args(sock, args.port), "python", PLUGIN,
           f"backup={os.path.abspath(args.backup)}"]
    return run_nbdkit(cmd, lambda: serves_nbd(sock, args.port), args.pidfile, [sock])
