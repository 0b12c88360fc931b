"""tzero backup: take a time-zero backup of designated datasets (default: every export) of
the given subsystems."""

import argparse
import datetime
import json
import sys
import time

from backupformat import Dataset as StreamDataset
from backupformat import Header, StreamWriter, parse_compression
from controller import __version__
from controller.backup.copier import Copier, CopierStats, pool_shape
from controller.backup.dataspec import parse_dataset
from controller.backup.group import DEFAULT_DEADLINE_MS, DEFAULT_LEASE_MS, ConsistencyGroup, TimeZero
from controller.backup.layout import Dataset, Striped
from controller.backup.output import BackupOutput
from controller.backup.plan import Plan, make_plan
from controller.cli.args import Subparsers, parse_size
from controller.cli.progress import Progress
from controller.errors import SubsystemError, TzeroError, UsageError

DEFAULT_HOST_MEMORY = "256M"


class CopySummary(CopierStats):
    """What _copy says of the stream it wrote, with the copier's counters."""

    time_zero: str
    pause_ms: float
    pause_ms_by_export: dict[str, float]
    pause_wall_ms: float
    datasets: list[str]
    bytes: int
    records: int
    data_bytes: int
    stored_bytes: int


class Summary(CopySummary):
    """What a backup prints: the last line with --json (docs/datasets.md lists the counters)."""

    chunks_cow: int  # all subsystems, from their final statistics
    side_peak_bytes: int  # the largest of them
    elapsed_s: float


def register(subparsers: Subparsers) -> None:
    p = subparsers.add_parser("backup", help="take a time-zero backup of live exports")
    p.add_argument("-s", "--subsystem", dest="controls", action="append", required=True, metavar="CTL",
                   help="control socket of a storage subsystem (repeat for several; order is stream order)")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="backup file, or - for standard output")
    p.add_argument("--json", action="store_true", help="print a JSON summary as the last line")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--host-memory", default=DEFAULT_HOST_MEMORY, metavar="SIZE",
                   help="bound on chunks held in memory by the controller (default 256M)")
    p.add_argument("--spill-dir", metavar="DIR", help="where chunks beyond --host-memory wait (default: TMPDIR)")
    p.add_argument("--freeze-deadline", default=DEFAULT_DEADLINE_MS, type=int, metavar="MS",
                   help="longest time writes may be held (default 2000)")
    p.add_argument("--lease", default=DEFAULT_LEASE_MS, type=int, metavar="MS",
                   help="subsystems end the session after this long without word (default 30000)")
    p.add_argument("--dataset", dest="datasets", action="append", metavar="NAME=SPEC",
                   help="a dataset to back up (repeat; order is stream order): EXPORT, EXPORT:START-END, "
                        "EXPORT:START+LENGTH, EXPORT:pN, concat:E1,E2,..., stripe:CHUNK:E1,E2,... "
                        "(default: every export whole); see docs/datasets.md")
    p.add_argument("--compress", metavar="zstd[:LEVEL]", default="none",
                   help="store records compressed with Zstandard (level 1-22, default 3) when it pays")
    p.add_argument("--read-path", choices=("auto", "nbd"), default="auto",
                   help="auto: read each view straight from its device when this host serves it, "
                        "else over NBD (default); nbd: always over NBD")
    p.add_argument("--force", action="store_true", help="replace an existing backup file")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    host_memory = parse_size(args.host_memory, "--host-memory")
    if args.freeze_deadline <= 0 or args.lease <= 0:
        raise UsageError("--freeze-deadline and --lease must be positive")
    started = time.monotonic()
    specs = [parse_dataset(a) for a in args.datasets or []]
    try:
        args.codec, args.level = parse_compression(args.compress)
    except ValueError as e:
        raise UsageError(f"--compress {e}") from None
    group = ConsistencyGroup(args.controls, lease_ms=args.lease, deadline_ms=args.freeze_deadline)
    output = BackupOutput(args.output, args.force)
    try:
        group.connect()
        chunk = _common_chunk_size(group)
        plan = make_plan(specs, group.members)
        pool_shape(host_memory // 2, chunk, len(plan.claims()))  # a too small --host-memory, said before freezing
        output.open()
        group.open(plan.tracks())
        zero = group.freeze_and_thaw()
        group.start_heartbeat()
        summary = _copy(args, group, plan, chunk, host_memory, zero, output)
        stats = group.close()
        output.commit()
    except BaseException as e:
        reason = e.message if isinstance(e, TzeroError) else type(e).__name__
        group.abort(f"controller gave up: {reason}")
        output.discard()
        raise
    _report(args, {**summary,
                   "chunks_cow": sum(s["chunks_cow"] for s in stats.values()),
                   "side_peak_bytes": max(s["side_peak_bytes"] for s in stats.values()),
                   "elapsed_s": round(time.monotonic() - started, 3)})
    return 0


def _common_chunk_size(group: ConsistencyGroup) -> int:
    sizes = {m.chunk_size for m in group.members}
    if len(sizes) != 1:
        raise SubsystemError(f"the subsystems use different chunk sizes ({', '.join(map(str, sorted(sizes)))}); "
                             "serve them with one --chunk")
    return sizes.pop()


def _copy(args: argparse.Namespace, group: ConsistencyGroup, plan: Plan, chunk: int, host_memory: int,
          zero: TimeZero, output: BackupOutput) -> CopySummary:
    time_zero = datetime.datetime.fromtimestamp(zero["time_zero"], datetime.UTC).isoformat()
    datasets = plan.datasets
    header = Header(tool_version=__version__, time_zero=time_zero, chunk_size=chunk,
                    datasets=[StreamDataset(d.name, d.size) for d in datasets],
                    extra={"pause_ms": zero["pause_ms"], "datasets": [describe(d) for d in datasets],
                           "compression": args.compress})
    writer = StreamWriter(output, header, args.codec, args.level)
    progress = Progress(sum(d.size for d in datasets), enabled=not args.no_progress)
    copier = Copier(group, plan, writer, chunk, host_memory, args.spill_dir, progress, local=args.read_path == "auto")
    group.stats_source = lambda: copier.published
    copied = copier.run()
    group.check()  # a session that died during the last reads must not yield a backup
    written = writer.finish()
    output.flush()
    progress.finish()
    return {
        "time_zero": time_zero,
        "pause_ms": round(max(zero["pause_ms"].values()), 3),
        "pause_ms_by_export": {k: round(v, 3) for k, v in zero["pause_ms"].items()},
        "pause_wall_ms": round(zero["pause_wall_ms"], 3),
        "datasets": [d.name for d in datasets],
        "bytes": written["bytes"],
        "records": written["records"],
        "data_bytes": written["data_bytes"],
        "stored_bytes": written["stored_bytes"],
        **copied,
    }


def describe(ds: Dataset) -> dict[str, object]:
    """What the header's extra says of a dataset: its spec and where its bytes came from."""
    layout = ds.layout
    where: dict[str, object]
    if isinstance(layout, Striped):
        where = {"layout": "stripe", "chunk": layout.chunk, "legs": layout.legs, "leg_size": layout.leg_size}
    else:
        where = {"layout": "linear", "extents": [list(x) for x in layout.extents]}
    return {"name": ds.name, "spec": ds.spec, **where}


def _report(args: argparse.Namespace, summary: Summary) -> None:
    out = sys.stderr if args.output == "-" else sys.stdout
    if args.json:
        print(json.dumps(summary), file=out)
    else:
        print(f"backup of {', '.join(summary['datasets'])} at time zero {summary['time_zero']}: "
              f"{summary['bytes']} bytes, writes held {summary['pause_ms']:.2f} ms, "
              f"{summary['chunks_cow']} chunks saved by copy-before-write, {summary['elapsed_s']} s", file=out)
