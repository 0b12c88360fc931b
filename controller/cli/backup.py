"""tzero backup: take a time-zero backup of designated datasets (default: every export) of
the given subsystems; with --since BASE, only what changed since BASE (incremental.py)."""

import argparse
import dataclasses
import datetime
import json
import os
import re
import sys
import time
from typing import TypedDict

from backupformat import INCREMENTAL_VERSION, Header, StreamWriter, parse_compression
from backupformat import Dataset as StreamDataset
from common.objectstore import is_s3_uri
from common.protocol import MAX_DEADLINE_MS, MAX_LEASE_MS, MIN_DEADLINE_MS, MIN_LEASE_MS
from common.units import human_duration, human_size
from controller import __version__, signals
from controller.backup.copier import Copier, CopierStats, pool_shape
from controller.backup.dataspec import parse_dataset
from controller.backup.group import ConsistencyGroup, TimeZero
from controller.backup.incremental import BaseBackup, changed_chunks, generations, open_sessions
from controller.backup.layout import describe
from controller.backup.output import BackupOutput
from controller.backup.plan import Plan, make_plan
from controller.backup.rate import parse_rate
from controller.backup.reorder import check_spill_dir
from controller.backup.s3output import DEFAULT_STREAMS, S3Output
from controller.backup.s3parts import check_part_size, choose_part_size, stream_bound
from controller.backup.sink import WriteBehind
from controller.cli import progress
from controller.cli.args import Subparsers, command, parse_duration, parse_size, setting
from controller.cli.progress import Progress
from controller.errors import SubsystemError, TzeroError, UsageError
from controller.progress import WaitClock, reasons

DEFAULT_HOST_MEMORY = "256M"
MAX_LABEL = 64
MAX_NOTE = 1000


class CopySummary(CopierStats):
    """What _copy says of the stream it wrote, with the copier's counters."""

    time_zero: str
    pause_ms: float
    pause_ms_by_export: dict[str, float]
    pause_ms_by_subsystem: dict[str, float]
    pause_wall_ms: float
    datasets: list[str]
    label: str | None
    note: str | None
    bytes: int
    records: int
    data_bytes: int
    stored_bytes: int
    rate: str  # --rate as taken: max, auto, or N MiB/s
    rate_waited_s: float  # how long the copy waited for --rate
    rate_yields: int  # --rate auto: how often it turned to its floor for the applications' writes


class Summary(CopySummary):
    """What a backup prints: the last line with --json (docs/datasets.md lists the counters)."""

    kind: str  # "full" or "incremental"
    base: dict[str, str] | None  # an incremental's base: file, digest, time_zero
    full_reason: str | None  # with --since: why a full backup was taken instead (--full-if-needed)
    changed_bytes: int | None  # an incremental: the dataset bytes changed since the base (what it holds)
    chunks_cow: int  # all subsystems, from their final statistics
    side_peak_bytes: int  # the largest of them
    elapsed_s: float
    object_store: "StoreSummary | None"  # None unless the backup went to s3://


class StoreSummary(TypedDict):
    """What a backup to s3:// adds: its parts, and the stale uploads of earlier runs it removed."""

    part_size: int
    parts: int
    upload_streams: int
    retried_parts: int  # part uploads sent again after a failure that may pass
    swept_uploads: list[str]


DESCRIPTION = """\
Take a time-zero backup: open a session on every subsystem given, hold application
writes on all their exports at once (for milliseconds, at most --freeze-deadline),
note what to copy, let the writes go on, then copy every dataset in the order given
while copy-before-write keeps each chunk's time-zero content until it is copied. The
backup equals, bit for bit, what every dataset held at that one instant, or the
command fails and writes nothing.

The backup goes to -o FILE, written as FILE.partial-XXXXXXXX (this run's own, 0600) and
renamed once complete and synced, while the run holds FILE.lock: a second run on the same
FILE is refused at once (exit 3) and touches nothing. Or to standard output (-o -), a FIFO
or a character device such as a tape, written in place; a block device is refused. Or to an object store (-o s3://BUCKET/KEY):
one multipart upload, the object appearing only once complete; credentials and endpoint
as for every S3 tool (docs/objectstore.md).
Chunks fetched ahead of their place wait in --host-memory, then in a spill file in
--spill-dir (default $TMPDIR or /tmp, which may be RAM: give a disk with room for the
side stores' worth of chunks when applications write a lot).
Dataset specs: docs/datasets.md.

With --since BASE the backup is incremental: only the chunks written, trimmed or zeroed
since BASE's time zero are copied and stored, of the same datasets as BASE (its own, when
no --dataset is given); restore, verify and serve-backup find BASE beside it by name. It
is refused (exit 1, one line saying why) when a subsystem cannot vouch for every change
since BASE (it was killed or crashed since, an image was written while it was not served,
it runs with --no-tracking, BASE is not among its last 4 backups); --full-if-needed takes
a full backup instead and says so (kind, full_reason)."""

EXAMPLES = (
    ("tzero backup -s /run/s1.ctl -o nightly.tzb", "every export of one subsystem, whole"),
    ("tzero backup -s /run/s1.ctl -s /run/s2.ctl -o - --label nightly | ssh tape 'cat > /tape/n.tzb'",
     "one time zero across two subsystems, down a pipe"),
    ("tzero backup -s /run/s1.ctl -o vol.tzb --compress zstd --dataset boot=vm1:p1 "
     "--dataset vol=stripe:64K:disk1,disk2", "a partition and a striped volume, compressed"),
    ("tzero backup -s /run/s1.ctl -o tue.tzb --since mon.tzb --full-if-needed",
     "only what changed since mon.tzb; a full backup when that cannot be known"),
    ("AWS_PROFILE=offsite tzero backup -s /run/s1.ctl -o s3://backups/host1/nightly.tzb",
     "straight to an object store"),
)


def register(subparsers: Subparsers) -> None:
    p = command(subparsers, "backup", summary="take a time-zero backup of live exports",
                description=DESCRIPTION, examples=EXAMPLES)
    setting(p, "-s", "--subsystem", key="subsystems", dest="controls", default=None, is_list=True, metavar="CTL",
            help="a storage subsystem's control socket, or HOST:PORT / [IPV6]:PORT on the network (repeat for "
                 "several, mixing both kinds; their order is the stream's)")
    setting(p, "--tls-certificates", key="tls-certificates", default=None, metavar="DIR",
            help="TLS for subsystems on the network: DIR holds ca-cert.pem, client-cert.pem, client-key.pem; "
                 "views are read over nbds:// with them")
    p.add_argument("-o", "--output", required=True, metavar="FILE",
                   help="the backup file, - for standard output, or s3://BUCKET/KEY (docs/objectstore.md)")
    p.add_argument("--dataset", dest="datasets", action="append", metavar="NAME=SPEC",
                   help="a dataset to back up (repeat; order is stream order): EXPORT, EXPORT:START-END, "
                        "EXPORT:START+LENGTH, EXPORT:pN, concat:E1,E2,..., stripe:CHUNK:E1,E2,... "
                        "(default: every export whole); see docs/datasets.md")
    p.add_argument("--label", metavar="TEXT", help="a short name stored in the backup, shown by tzero ls")
    p.add_argument("--note", metavar="TEXT", help="a free text stored in the backup, shown by tzero ls")
    setting(p, "--compress", key="compress", default="none", metavar="none|zstd[:LEVEL]",
            help="store records compressed with Zstandard (level 1-22, 3 when not given) when it pays")
    setting(p, "--host-memory", key="host-memory", default=DEFAULT_HOST_MEMORY, metavar="SIZE",
            help="memory for read buffers and chunks waiting for their place in the stream")
    setting(p, "--spill-dir", key="spill-dir", default=None, metavar="DIR",
            shown_default="$TMPDIR, else /tmp", help="where chunks beyond --host-memory wait")
    setting(p, "--freeze-deadline", key="freeze-deadline", default="2s", metavar="DURATION",
            help="longest time application writes may be held (1 ms to 30 s); past it the backup fails, "
                 "the writes go on")
    setting(p, "--lease", key="lease", default="30s", metavar="DURATION",
            help="a subsystem abandons the session after this long without word from this command "
                 "(100 ms to 2 min)")
    setting(p, "--rate", key="rate", default="max", metavar="max|auto|RATE",
            help="how fast the copy reads the disks: max; RATE bytes per second as a size (200M is 200 MiB/s), "
                 "after a first tenth of a second at full speed; auto: 64 MiB/s while applications write 200 times "
                 "a second or more without those writes saving chunks, else full speed. Time zero is never slowed, "
                 "and chunks saved by copy-before-write are fetched at once when the subsystem runs short of room, "
                 "whatever the rate")
    setting(p, "--read-path", key="read-path", default="auto", choices=("auto", "nbd"),
            help="auto: read each view straight from its device (and its saved chunks from the side store) when "
                 "this host serves it, else over NBD; "
                 "nbd: always over NBD")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object (docs/json.md)")
    p.add_argument("--force", action="store_true", help="replace an existing backup file or object")
    p.add_argument("--since", metavar="BASE",
                   help="an incremental backup: only what changed since BASE, an earlier backup (full or "
                        "incremental) of the same datasets, to keep beside this one")
    p.add_argument("--full-if-needed", action="store_true",
                   help="with --since: take a full backup instead of refusing when the changes are not known "
                        "(for scheduled jobs); the summary says which was taken and why")
    setting(p, "--part-size", key="part-size", default=None, metavar="SIZE",
            shown_default="16M, more when 10,000 parts could not hold the backup",
            help="s3:// only: bytes per part of the upload, 5M to 5G; the upload holds --upload-streams + 1 parts "
                 "in memory")
    setting(p, "--upload-streams", key="upload-streams", default=str(DEFAULT_STREAMS), metavar="N",
            help="s3:// only: parts sent at once, 1 to 16")
    progress.add_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if not args.controls:
        raise UsageError("name at least one subsystem: -s CTL (or $TZERO_SUBSYSTEMS, or subsystems in the config file)")
    host_memory = parse_size(args.host_memory, "--host-memory")
    lease = parse_duration(args.lease, "--lease")
    deadline = parse_duration(args.freeze_deadline, "--freeze-deadline")
    for option, value, lo, hi in (("--freeze-deadline", deadline, MIN_DEADLINE_MS, MAX_DEADLINE_MS),
                                  ("--lease", lease, MIN_LEASE_MS, MAX_LEASE_MS)):
        if not lo <= value <= hi:
            raise UsageError(f"{option} {getattr(args, option[2:].replace('-', '_'))}: must be from "
                             f"{_ms(lo)} to {_ms(hi)}")
    extra = catalog_entry(args.label, args.note)
    try:
        args.rate = parse_rate(args.rate)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if args.read_path not in ("auto", "nbd"):
        raise UsageError(f"--read-path {args.read_path!r}: choose auto or nbd")
    if args.full_if_needed and not args.since:
        raise UsageError("--full-if-needed goes with --since")
    started = time.monotonic()
    try:
        args.codec, args.level = parse_compression(args.compress)
    except ValueError as e:
        raise UsageError(f"--compress {e}") from None
    base = BaseBackup.read(args.since, args.output) if args.since else None
    note = base.placement_note(args.output) if base else None
    if note:
        print(f"tzero: {note}", file=sys.stderr)
    specs = [parse_dataset(a) for a in args.datasets] if args.datasets else (base.specs() if base else [])
    names = [s.name for s in specs]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise UsageError(f"--dataset: the name {twice[0]!r} is given twice")
    check_spill_dir(args.spill_dir)
    tls_dir = os.path.abspath(args.tls_certificates) if args.tls_certificates else None
    group = ConsistencyGroup(args.controls, lease_ms=lease, deadline_ms=deadline, tls_dir=tls_dir)
    output = _output(args)
    try:
        group.connect()
        chunk = _common_chunk_size(group)
        plan = make_plan(specs, group.members)
        pool_shape(host_memory // 2, chunk, len(plan.claims()))  # a too small --host-memory, said before freezing
        if isinstance(output, S3Output):
            output.set_part_size(choose_part_size(output.requested_part_size, stream_bound(plan.datasets, chunk)))
        output.open()  # OUT's lock before any session: a run racing another on OUT is refused at no cost
        full_reason = open_sessions(group, plan, base, args.full_if_needed)
        incremental = base if full_reason is None else None
        zero = group.freeze_and_thaw()
        if incremental is not None:
            plan.narrow(changed_chunks(group, plan), chunk)
        group.start_heartbeat()
        summary = _copy(args, group, plan, chunk, host_memory, zero, output, extra, incremental)
        stats = group.close()
        output.commit()
    except BaseException as e:
        reason = e.message if isinstance(e, TzeroError) else str(e) or type(e).__name__
        with signals.deferred():  # a signal now waits until the clean-up is done
            group.abort(f"controller gave up: {reason}")
            note = None
            if isinstance(output, S3Output):
                note = output.discard()
            else:
                output.discard()
        if note:
            raise _with_note(e, note) from None
        raise
    _report(args, {**summary,
                   "kind": "full" if incremental is None else "incremental",
                   "base": incremental.link()._asdict() if incremental else None,
                   "full_reason": full_reason if base is not None and incremental is None else None,
                   "changed_bytes": plan.changed_bytes() if incremental else None,
                   "chunks_cow": sum(s["chunks_cow"] for s in stats.values()),
                   "side_peak_bytes": max(s["side_peak_bytes"] for s in stats.values()),
                   "elapsed_s": round(time.monotonic() - started, 3),
                   "object_store": _store_summary(output)})
    return 0


def _store_summary(output: BackupOutput | S3Output) -> "StoreSummary | None":
    if not isinstance(output, S3Output):
        return None
    assert output.part_size is not None, "set before the upload"
    return {"part_size": output.part_size, "parts": output.parts, "upload_streams": output.streams,
            "retried_parts": output.retries, "swept_uploads": output.swept}


def _output(args: argparse.Namespace) -> BackupOutput | S3Output:
    """Where the stream goes, checked before anything is frozen. --part-size and
    --upload-streams are checked whatever the output, so a mistake in a config file shows."""
    part_size = None if args.part_size is None else parse_size(args.part_size, "--part-size")
    if part_size is not None:
        check_part_size(part_size)
    streams = args.upload_streams
    if not re.fullmatch(r"[0-9]{1,2}", streams) or not 1 <= int(streams) <= 16:
        raise UsageError(f"--upload-streams {streams!r}: give a number from 1 to 16")
    if not is_s3_uri(args.output):
        return BackupOutput(args.output, args.force)
    output = S3Output(args.output, args.force, part_size, int(streams))
    for key in output.swept:
        print(f"tzero: removed an unfinished upload of s3://{output.uri.bucket}/{key} left by an earlier run",
              file=sys.stderr)
    return output


def _with_note(e: BaseException, note: str) -> BaseException:
    """E with NOTE (what is left behind) in its one line, and the same exit status."""
    if isinstance(e, TzeroError):
        error = TzeroError(f"{e.message}; {note}")
        error.exit_code = e.exit_code
        return error
    if isinstance(e, signals.Interrupted):
        interrupted = signals.Interrupted(e.signum)
        interrupted.args = (f"{interrupted}; {note}",)
        return interrupted
    print(f"tzero: {note}", file=sys.stderr)  # a bug: its traceback follows
    return e


def _ms(ms: int) -> str:
    return f"{ms} ms" if ms < 1000 else f"{ms // 1000} s"


def catalog_entry(label: str | None, note: str | None) -> dict[str, str]:
    """What --label and --note put in the header's extra; UsageError for text a listing cannot show."""
    extra = {}
    for flag, text, longest in (("--label", label, MAX_LABEL), ("--note", note, MAX_NOTE)):
        if text is None:
            continue
        if not text.strip() or len(text) > longest or any(ord(c) < 32 or ord(c) == 127 for c in text):
            raise UsageError(f"{flag} must be 1 to {longest} characters of printable text")
        extra[flag[2:]] = text
    return extra


def _common_chunk_size(group: ConsistencyGroup) -> int:
    sizes = {m.chunk_size for m in group.members}
    if len(sizes) != 1:
        raise SubsystemError(f"the subsystems use different chunk sizes ({', '.join(map(str, sorted(sizes)))}); "
                             "serve them with one --chunk")
    return sizes.pop()


def _copy(args: argparse.Namespace, group: ConsistencyGroup, plan: Plan, chunk: int, host_memory: int,
          zero: TimeZero, output: BackupOutput | S3Output, catalog: dict[str, str],
          base: BaseBackup | None) -> CopySummary:
    time_zero = datetime.datetime.fromtimestamp(zero["time_zero"], datetime.UTC).isoformat()
    datasets = plan.datasets
    extra = {"pause_ms": zero["pause_ms"], "datasets": [describe(d) for d in datasets], "compression": args.compress,
             "tracking": generations(group, plan), **catalog}
    header = Header(tool_version=__version__, time_zero=time_zero, chunk_size=chunk,
                    datasets=[StreamDataset(d.name, d.size) for d in datasets], extra=extra)
    if base is not None:
        header = dataclasses.replace(header, format_version=INCREMENTAL_VERSION, base=base.link())
    output_wait = WaitClock("waiting on the output writes")
    # The stream is written by a thread of its own while the copy loop reads (sink.py); it is
    # ended here, before the caller commits or discards the output.
    sink = WriteBehind(output, clock=output_wait)
    progress = Progress(args, "backup", sum(d.size for d in datasets))
    try:
        writer = StreamWriter(sink, header, args.codec, args.level)
        copier = Copier(group, plan, writer, chunk, host_memory, args.spill_dir, progress.update,
                        local=args.read_path == "auto", rate=args.rate, fence=sink)
        progress.why_slow = reasons(copier.slow_reason, output_wait.reason)
        group.stats_source = lambda: copier.published
        copied = copier.run()
        group.check()  # a session that died during the last reads must not yield a backup
        written = writer.finish()
        sink.close()
        output.flush()
        progress.finish()
    except BaseException:
        sink.abort()
        raise
    finally:
        progress.close()
    return {
        "time_zero": time_zero,
        "pause_ms": round(max(zero["pause_ms"].values()), 3),
        "pause_ms_by_export": {k: round(v, 3) for k, v in zero["pause_ms"].items()},
        "pause_ms_by_subsystem": {k: round(v, 3) for k, v in zero["pause_ms_by_subsystem"].items()},
        "pause_wall_ms": round(zero["pause_wall_ms"], 3),
        "datasets": [d.name for d in datasets],
        "label": catalog.get("label"),
        "note": catalog.get("note"),
        "bytes": written["bytes"],
        "records": written["records"],
        "data_bytes": written["data_bytes"],
        "stored_bytes": written["stored_bytes"],
        "rate": str(args.rate),
        "rate_waited_s": round(copier.pacer.waited_s, 3),
        "rate_yields": copier.pacer.yielded,
        **copied,
    }


def _report(args: argparse.Namespace, summary: Summary) -> None:
    out = sys.stderr if args.output == "-" else sys.stdout
    if args.json:
        print(json.dumps(summary), file=out)
        return
    if args.quiet:
        return
    if summary["full_reason"]:
        print(f"tzero: a full backup instead of an incremental one: {summary['full_reason']}", file=out)
    base = summary["base"]
    kind = f"incremental backup (since {base['file']})" if base else "backup"
    by_host = summary["pause_ms_by_subsystem"]
    each = f" ({', '.join(f'{k} {v:.2f}' for k, v in by_host.items())})" if len(by_host) > 1 else ""
    print(f"{kind} of {', '.join(summary['datasets'])} at time zero {summary['time_zero']}: "
          f"{human_size(summary['bytes'])} written ({human_size(summary['data_bytes'])} of data) in "
          f"{human_duration(summary['elapsed_s'])}, writes held {summary['pause_ms']:.2f} ms{each}, "
          f"{summary['chunks_cow']} chunks saved by copy-before-write", file=out)
    if args.verbose:
        for export, path in summary["read_path"].items():
            print(f"  {export}: read {path}", file=out)
        print(f"  chunks: {summary['chunks_in_order']} in order, {summary['chunks_ahead']} ahead, "
              f"{summary['chunks_opportunistic']} fetched under pressure, {summary['chunks_zero']} all zero; "
              f"{human_size(summary['spilled_bytes'])} spilled, host buffer peak "
              f"{human_size(summary['peak_host_buffer_bytes'])}, side store peak "
              f"{human_size(summary['side_peak_bytes'])}", file=out)
