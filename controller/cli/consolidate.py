"""`tzero consolidate INC -o FULL`: an incremental backup's chain written as one full backup."""

import argparse
import json
import sys

from backupformat import parse_compression
from common.units import human_size
from controller.backup.output import BackupOutput
from controller.cli.args import Subparsers, command
from controller.errors import UsageError
from controller.restore.chain import opened_chain
from controller.restore.consolidate import consolidate

DESCRIPTION = """\
Read an incremental backup INC and its chain of bases (found beside it by the file names
it records, or given with --base) and write the image at INC's time zero as one full
backup: INC's time zero, datasets and change-tracking generations, so it can be the base
of the next incremental backup. Every backup of the chain is read whole and every link
checked; FULL takes its name only then (with -o -, the stream gets its trailer only
then). A missing, replaced or altered base is one line naming it (exit 4). Given a full
backup, it copies it (with --compress, recompressed)."""

EXAMPLES = (
    ("tzero consolidate tue.tzb -o tue-full.tzb", "tue.tzb, mon.tzb and nightly.tzb as one full backup"),
    ("tzero consolidate tue.tzb -o - --base /tape/nightly.tzb | ssh vault 'cat > tue.tzb'",
     "to a pipe, with a base that is not beside tue.tzb"),
)


def register(subparsers: Subparsers) -> None:
    p = command(subparsers, "consolidate", summary="write an incremental backup and its bases as one full backup",
                description=DESCRIPTION, examples=EXAMPLES)
    p.add_argument("backup", metavar="INC", help="the incremental backup")
    p.add_argument("-o", "--output", required=True, metavar="FULL", help="the full backup, or - for standard output")
    p.add_argument("--base", dest="bases", action="append", metavar="FILE",
                   help="a base of INC (repeat for each), instead of looking beside it")
    p.add_argument("--compress", metavar="zstd[:LEVEL]|none",
                   help="how to store the records (default: as INC was taken)")
    p.add_argument("--force", action="store_true", help="replace an existing FULL")
    p.add_argument("--json", action="store_true", help="print one JSON object when done (docs/json.md)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    output = BackupOutput(args.output, args.force)
    with opened_chain(args.backup, args.bases) as chain:
        compression = args.compress or str(chain.top.header.extra.get("compression") or "none")
        try:
            codec, level = parse_compression(compression)
        except ValueError as e:
            raise UsageError(f"--compress {e}") from None
        labels = [s.label for s in chain.sources]
        output.open()
        try:
            summary = consolidate(chain.readers, labels, output, codec, level, compression)
            output.flush()
            output.commit()
        except BaseException:
            output.discard()
            raise
    report = {"backup": args.output, "time_zero": chain.top.header.time_zero, "chain": list(reversed(labels)),
              **summary}
    out = sys.stderr if args.output == "-" else sys.stdout
    if args.json:
        print(json.dumps(report), file=out)
    elif not args.quiet:
        print(f"{args.output}: a full backup at time zero {report['time_zero']} from a chain of {len(labels)} "
              f"({', '.join(report['chain'])}): {human_size(summary['bytes'])}, digest {summary['digest']}",
              file=out)
    return 0
