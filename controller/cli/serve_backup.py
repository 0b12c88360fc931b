"""tzero serve-backup: serve a backup file read-only over NBD, one export per dataset.

The backup's header, trailer and index are checked here first, so a damaged or
missing file is one line, not an nbdkit traceback; records are checked as they
are read (a damaged one fails that read with EIO). Like `tzero serve`, nbdkit
runs in the foreground; the pidfile appears once the socket serves NBD, and
SIGTERM or SIGINT stops it and removes the socket and the pidfile.
"""

import argparse
import os
import shlex

from backupformat import FormatError
from common.endpoint import Endpoint, bracketed
from common.objectstore import is_s3_uri
from common.units import human_size
from controller.cli.args import Subparsers, command, integer
from controller.errors import UsageError
from controller.nbd.nbdkit_runner import (
    PLUGIN_DIR,
    check_pidfile,
    check_port,
    listen_args,
    require_nbdkit,
    run_nbdkit,
    serves_nbd,
)
from controller.net.listen import NbdListen, checked_certificates, checked_transport
from controller.restore.chain import opened_chain

PLUGIN = os.path.join(PLUGIN_DIR, "backup_plugin.py")


DESCRIPTION = """\
Serve every dataset of BACKUP as a read-only NBD export named after it, such as
'nbd+unix:///NAME?socket=SOCK', reading records through the backup's index: qemu-img,
nbdcopy, nbdinfo, guestfish or a kernel /dev/nbdN (tzero attach --read-only) read a
backup in place, without restoring it. Bytes no record holds read as zeros and are
reported as holes. Runs in the foreground until SIGTERM or SIGINT; prints 'ready' and
the URI of every export once the socket serves. An incremental backup is served merged
with its chain of bases (found beside it, or given with --base): the image at its time
zero."""

EXAMPLES = (
    ("tzero serve-backup nightly.tzb --socket /run/b.sock", "serve a backup's datasets"),
    ("nbdcopy 'nbd+unix:///db?socket=/run/b.sock' db.raw", "then copy one dataset out of it"),
    ("qemu-img convert -O qcow2 'nbd+unix:///vm1?socket=/run/b.sock' vm1.qcow2", "or convert one to qcow2"),
    ("tzero serve-backup s3://backups/host1/nightly.tzb --socket /run/b.sock",
     "serve one that sits in an object store, read by ranged GETs"),
)


def register(subparsers: Subparsers) -> None:
    p = command(subparsers, "serve-backup", summary="serve a backup read-only over NBD, one export per dataset",
                description=DESCRIPTION, examples=EXAMPLES)
    p.add_argument("backup", metavar="BACKUP", help="a backup file (seekable; not standard input) or s3://BUCKET/KEY")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--socket", metavar="SOCK", help="NBD unix socket (default ./tzero-backup.sock)")
    where.add_argument("--port", type=integer, metavar="PORT", help="NBD on this TCP port instead of a unix socket")
    p.add_argument("--bind", metavar="ADDR", help="the address NBD listens on with --port (default 127.0.0.1)")
    p.add_argument("--tls-certificates", metavar="DIR",
                   help="require TLS and a client certificate signed by DIR's CA (DIR: ca-cert.pem, "
                        "server-cert.pem, server-key.pem)")
    p.add_argument("--insecure-plaintext-tcp", action="store_true",
                   help="allow TCP without TLS on loopback, where any local user can then read the backup")
    p.add_argument("--pidfile", metavar="FILE", help="written once the socket serves NBD")
    p.add_argument("--base", dest="bases", action="append", metavar="FILE",
                   help="a base of an incremental backup (repeat for each), instead of looking beside it")
    p.set_defaults(func=run)


def _check(args: argparse.Namespace) -> tuple[list[tuple[str, int]], list[str]]:
    """Everything that can be wrong before nbdkit starts, as one line; the datasets (name, size)
    and the chain's files, newest first."""
    require_nbdkit()
    if args.port is not None:
        check_port(args.port)
    check_pidfile(args.pidfile)
    if args.backup == "-":
        raise UsageError("serve-backup needs a backup file it can seek in, not standard input")
    with opened_chain(args.backup, args.bases, random_access=True) as chain:
        for i, reader in enumerate(chain.readers):
            try:
                reader.read_index()
            except FormatError as e:
                e.layer = i
                raise
        header = chain.top.header
        if not header.datasets:
            raise UsageError(f"{args.backup} holds no datasets to serve")
        paths = [s.path if is_s3_uri(s.path) else os.path.abspath(s.path) for s in chain.sources]
        return [(d.name, d.size) for d in header.datasets], paths


def _listen(args: argparse.Namespace) -> NbdListen:
    if args.port is None:
        if args.bind:
            raise UsageError("--bind is for NBD over TCP: give --port too")
        return NbdListen(socket=os.path.abspath(args.socket or "tzero-backup.sock"))
    tls_dir = os.path.abspath(args.tls_certificates) if args.tls_certificates else None
    where = NbdListen(host=args.bind or "127.0.0.1", port=args.port, tls_dir=tls_dir)
    if not 0 < args.port < 65536:
        raise UsageError(f"--port {args.port}: not a TCP port")
    if tls_dir is not None:
        checked_certificates(tls_dir)
    checked_transport(Endpoint(host=where.host, port=args.port), tls_dir, args.insecure_plaintext_tcp, "NBD")
    return where


def run(args: argparse.Namespace) -> int:
    datasets, paths = _check(args)
    where = _listen(args)
    cmd = ["nbdkit", "-f", "-r", "--exit-with-parent", *(["-v"] if args.verbose else []), *listen_args(where),
           "python", PLUGIN, *[f"backup={p}" for p in paths]]
    lines = [f"tzero serve-backup: ready; serving {args.backup}"]
    for name, size in datasets:
        if where.socket is not None:
            uri = f"nbd+unix:///{name}?socket={where.socket}"
        else:
            uri = f"{'nbds' if where.tls_dir else 'nbd'}://{bracketed(where.dial_host)}:{where.port}/{name}"
        lines.append(f"  dataset {name}: {shlex.quote(uri)}  ({human_size(size)}, read-only)")
    return run_nbdkit(cmd, lambda: serves_nbd(where), args.pidfile, [where.socket], announce="\n".join(lines),
                      verbose=args.verbose)
