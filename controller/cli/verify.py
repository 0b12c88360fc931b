"""`tzero verify BACKUP`: read a whole backup and say whether it is intact."""

import argparse
import json

from common.units import human_size
from controller.cli import progress
from controller.cli.args import Subparsers, command
from controller.cli.progress import Progress
from controller.errors import BackupFormatError
from controller.restore.verify import backup_label, opened_backup, verify

DESCRIPTION = """\
Read a whole backup and check every record's checksum, the order of the records, the
index, the trailer and the digest of the whole stream. Exit 0 when it is intact; exit 4
naming the dataset and offset of the first bad record, or what else is wrong, when not.
Reads standard input with -, so a backup can be checked as it comes off a tape or
another host."""

EXAMPLES = (
    ("tzero verify nightly.tzb", "check a backup file"),
    ("ssh tape cat /tape/n.tzb | tzero verify - --json", "check one coming down a pipe; one JSON line"),
)


def register(subparsers: Subparsers) -> None:
    p = command(subparsers, "verify", summary="check every record, the index and the digest of a backup",
                description=DESCRIPTION, examples=EXAMPLES)
    p.add_argument("backup", metavar="BACKUP", help="the backup file, or - for standard input")
    p.add_argument("--json", action="store_true", help="print one JSON object (docs/json.md)")
    progress.add_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    label = backup_label(args.backup)
    try:
        with opened_backup(args.backup) as reader:
            shown = Progress(args, "verify", sum(d.size for d in reader.header.datasets))
            try:
                s = verify(reader, shown.update)
                shown.finish()
            finally:
                shown.close()
    except BackupFormatError as e:
        if args.json:  # the verdict on standard output too, for a script that reads only that
            print(json.dumps({"backup": label, "intact": False, "error": e.message}))
        raise
    if args.json:
        print(json.dumps({"backup": label, "intact": True, "datasets": s.datasets, "records": s.records,
                          "data_bytes": s.data_bytes, "stream_bytes": s.stream_bytes, "digest": s.digest}))
    elif not args.quiet:
        print(f"{label}: intact: {s.datasets} datasets, {s.records} records, "
              f"{human_size(s.data_bytes)} of data, {human_size(s.stream_bytes)} in all, digest {s.digest}")
    return 0
