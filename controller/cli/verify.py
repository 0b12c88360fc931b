"""`tzero verify BACKUP`: read a whole backup and say whether it is intact; for an incremental
backup, every backup of its chain and every link."""

import argparse
import json

from common.units import human_size
from controller.cli import progress
from controller.cli.args import Subparsers, command
from controller.cli.progress import Progress
from controller.errors import BackupFormatError
from controller.restore.chain import opened_chain
from controller.restore.verify import backup_label, verify_chain

DESCRIPTION = """\
Read a whole backup and check every record's checksum, the order of the records, the
index, the trailer and the digest of the whole stream. Exit 0 when it is intact; exit 4
naming the dataset and offset of the first bad record, or what else is wrong, when not.
Reads standard input with -, so a backup can be checked as it comes off a tape or
another host.

An incremental backup is checked with its chain of bases (found beside it by the names
it records, or given with --base): each base whole, and that its digest is the one the
backup over it recorded. A missing, replaced or altered base fails naming it."""

EXAMPLES = (
    ("tzero verify nightly.tzb", "check a backup file"),
    ("ssh tape cat /tape/n.tzb | tzero verify - --json", "check one coming down a pipe; one JSON line"),
)


def register(subparsers: Subparsers) -> None:
    p = command(subparsers, "verify", summary="check every record, the index and the digest of a backup",
                description=DESCRIPTION, examples=EXAMPLES)
    p.add_argument("backup", metavar="BACKUP", help="the backup file, s3://BUCKET/KEY, or - for standard input")
    p.add_argument("--json", action="store_true", help="print one JSON object (docs/json.md)")
    p.add_argument("--base", dest="bases", action="append", metavar="FILE",
                   help="a base of an incremental backup (repeat for each), instead of looking beside it")
    progress.add_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    label = backup_label(args.backup)
    try:
        with opened_chain(args.backup, args.bases) as chain:
            shown = Progress(args, "verify", sum(d.size for r in chain.readers for d in r.header.datasets))
            try:
                s = verify_chain(chain.readers, shown.update)
                shown.finish()
            finally:
                shown.close()
            labels = [src.label for src in reversed(chain.sources)]
    except BackupFormatError as e:
        if args.json:  # the verdict on standard output too, for a script that reads only that
            print(json.dumps({"backup": label, "intact": False, "error": e.message}))
        raise
    if args.json:
        print(json.dumps({"backup": label, "intact": True, "datasets": s.datasets, "records": s.records,
                          "data_bytes": s.data_bytes, "stream_bytes": s.stream_bytes, "digest": s.digest,
                          "chain": labels}))
    elif not args.quiet:
        line = (f"{label}: intact: {s.datasets} datasets, {s.records} records, "
                f"{human_size(s.data_bytes)} of data, {human_size(s.stream_bytes)} in all, digest {s.digest}")
        if len(labels) > 1:
            line += f"; its chain of {len(labels)} intact and every link checked, oldest first: {', '.join(labels)}"
        print(line)
    return 0
