"""`tzero restore OUT --to DIR` and `tzero restore OUT --dataset NAME --to TARGET`."""

import argparse
import os

from controller.cli.args import Subparsers
from controller.errors import UsageError
from controller.restore.restore import restore
from controller.restore.targets import is_nbd_uri, open_target, plan_directory
from controller.restore.verify import backup_label, opened_backup


def register(subparsers: Subparsers) -> None:
    p = subparsers.add_parser(
        "restore", help="restore datasets from a backup",
        description="Without --dataset, write DIR/NAME.img (raw, sparse, exact size) for every "
                    "dataset. With --dataset NAME, restore that one onto a file, a directory "
                    "(DIR/NAME.img), a block device or an NBD URI such as "
                    "nbd+unix:///NAME?socket=SOCK; a device or export must be at least as "
                    "large as the dataset, and its bytes beyond the dataset are left alone. "
                    "Files appear only once the whole backup has verified. An unknown "
                    "dataset NAME is a usage error (exit 2).")
    p.add_argument("backup", metavar="OUT", help="the backup file, or - for stdin")
    p.add_argument("--to", required=True, metavar="DIR|PATH|NBD-URI", help="where to restore")
    p.add_argument("--dataset", metavar="NAME", help="restore only this dataset")
    p.add_argument("--force", action="store_true", help="replace existing image files")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    label = backup_label(args.backup)
    if args.dataset is None and (is_nbd_uri(args.to) or
                                 (os.path.exists(args.to) and not os.path.isdir(args.to))):
        raise UsageError(f"--to {args.to} is not a directory; to restore one dataset onto a "
                         "file, device or NBD URI, name it with --dataset NAME")
    with opened_backup(args.backup) as reader:
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
            plan = {index: open_target(args.to, header.datasets[index], args.force)}
        targets = restore(reader, label, plan)
    for t in targets:
        print(f"restored {t.dataset.name!r} ({t.dataset.size} bytes) to {t.label}")
    return 0
