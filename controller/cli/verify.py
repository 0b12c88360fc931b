"""`tzero verify OUT`: read a whole backup and say whether it is intact."""

import argparse

from controller.cli.args import Subparsers
from controller.restore.verify import backup_label, opened_backup, verify


def register(subparsers: Subparsers) -> None:
    p = subparsers.add_parser(
        "verify", help="check every record, the index and the digest of a backup",
        description="Read a whole backup and check every record, the index, the trailer "
                    "and the digest. Exit 0 when intact; exit 1 naming the dataset and "
                    "offset of the first bad record when not.")
    p.add_argument("backup", metavar="OUT", help="the backup file, or - for stdin")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    with opened_backup(args.backup) as reader:
        s = verify(reader)
    print(f"{backup_label(args.backup)}: intact: {s.datasets} datasets, {s.records} records, "
          f"{s.data_bytes} bytes of data, {s.stream_bytes} bytes in all, digest {s.digest}")
    return 0
