"""`tzero restore BACKUP --to DIR` and `tzero restore BACKUP --dataset NAME --to TARGET`."""

import argparse
import json
import os
import sys
import time

from backupformat.chain import merged
from common.units import human_duration, human_size
from controller.cli import progress
from controller.cli.args import Subparsers, command, setting
from controller.cli.progress import Progress
from controller.errors import UsageError
from controller.progress import WaitClock
from controller.restore.chain import opened_chain
from controller.restore.restore import restore
from controller.restore.targets import is_nbd_uri, open_target, plan_directory
from controller.restore.verify import backup_label

DESCRIPTION = """\
Restore datasets from a backup. Without --dataset, write DIR/NAME.img (raw, sparse,
of the dataset's exact size) for every dataset. With --dataset NAME, restore that one
onto a file, a directory (DIR/NAME.img), a block device or an NBD URI such as
'nbd+unix:///NAME?socket=SOCK' or 'nbds://HOST:PORT/NAME' (with --tls-certificates DIR, or
?tls-certificates=DIR in the URI; quote it: ? is a shell pattern); a device or export
must be at least as large as the dataset, and its bytes beyond the dataset are left
alone.

The whole backup is read once and verified as it goes; files appear under their names
only once it has all verified (until then they are NAME.img.partial). A device or an
export is written in place, and only with --force: what was found there (the export the
server resolved the URI's name to, its size) is printed before the first write; a failure
midway says that it is incomplete. An unknown dataset NAME is a usage error (exit 2).

An incremental backup is restored with its chain of bases, found beside it by the names
it records (or given with --base): each block is written once, from the newest backup
that holds it, and nothing is committed before every backup of the chain and every link
verified. A missing, replaced or altered base is one line naming it (exit 4)."""

EXAMPLES = (
    ("tzero restore nightly.tzb --to /srv/restored", "every dataset as /srv/restored/NAME.img"),
    ("tzero restore nightly.tzb --dataset db --to /dev/vg/db", "one dataset onto a block device"),
    ("ssh tape cat /tape/n.tzb | tzero restore - --dataset vm1 --to 'nbd+unix:///vm1?socket=/run/s1.sock'",
     "one dataset from a pipe onto a live NBD export"),
    ("tzero restore tue.tzb --to /srv/restored", "an incremental backup, with mon.tzb and nightly.tzb beside it"),
)


def register(subparsers: Subparsers) -> None:
    p = command(subparsers, "restore", summary="restore datasets from a backup", description=DESCRIPTION,
                examples=EXAMPLES)
    p.add_argument("backup", metavar="BACKUP", help="the backup file, s3://BUCKET/KEY, or - for standard input")
    p.add_argument("--to", required=True, metavar="DIR|PATH|NBD-URI", help="where to restore")
    p.add_argument("--dataset", metavar="NAME", help="restore only this dataset")
    p.add_argument("--force", action="store_true",
                   help="replace existing image files; overwrite a block device or NBD export")
    p.add_argument("--base", dest="bases", action="append", metavar="FILE",
                   help="a base of an incremental backup (repeat for each), instead of looking beside it")
    p.add_argument("--json", action="store_true", help="print one JSON object when done (docs/json.md)")
    progress.add_options(p)
    setting(p, "--tls-certificates", key="tls-certificates", default=None, metavar="DIR",
            help="certificates for an nbds:// target (DIR: ca-cert.pem, client-cert.pem, client-key.pem)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    started = time.monotonic()
    label = backup_label(args.backup)
    if args.dataset is None and (is_nbd_uri(args.to) or
                                 (os.path.exists(args.to) and not os.path.isdir(args.to))):
        raise UsageError(f"--to {args.to} is not a directory; to restore one dataset onto a "
                         "file, device or NBD URI, name it with --dataset NAME")
    with opened_chain(args.backup, args.bases) as chain:
        reader = chain.top
        header = reader.header
        if args.dataset is None:
            plan = plan_directory(header, args.to, args.force)
        else:
            try:
                index = header.index_of(args.dataset)
            except KeyError:
                names = ", ".join(repr(d.name) for d in header.datasets) or "no datasets"
                raise UsageError(f"{label} has no dataset {args.dataset!r}; "
                                 f"it holds {names}") from None
            target = open_target(args.to, header.datasets[index], args.force, args.tls_certificates)
            if not target.atomic and not args.quiet:  # it holds data: say what is about to be overwritten
                dataset = header.datasets[index]
                print(f"restoring {dataset.name!r} ({human_size(dataset.size)}) onto {target.described}",
                      file=sys.stderr if args.json else sys.stdout, flush=True)
            plan = {index: target}
        shown = Progress(args, "restore", sum(d.size for d in header.datasets))
        wait = WaitClock("waiting on the target writes")
        shown.why_slow = wait.reason
        try:
            targets = restore(reader, label, plan, shown.update, wait, merged(chain.readers), chain.error)
            shown.finish()
        finally:
            shown.close()
    if args.json:
        print(json.dumps({"backup": label, "time_zero": header.time_zero,
                          "datasets": [{"name": t.dataset.name, "size": t.dataset.size, "target": t.label}
                                       for t in targets],
                          "elapsed_s": round(time.monotonic() - started, 3)}))
    elif not args.quiet:
        for t in targets:
            print(f"restored {t.dataset.name!r} ({human_size(t.dataset.size)}) to {t.label}")
        if args.verbose:
            print(f"backup {label} of time zero {header.time_zero} verified, "
                  f"{human_duration(time.monotonic() - started)}")
    return 0
