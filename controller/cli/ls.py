"""`tzero ls OUT [--json]`: what a backup holds, from its header (and trailer).

Reads the header only, plus the trailer at the end when OUT is a seekable file;
it does not verify the records (that is `tzero verify`).
"""

import argparse
import json
from typing import TypedDict

from backupformat import FormatError
from controller.cli.args import Subparsers
from controller.errors import BackupFormatError
from controller.restore.verify import backup_label, opened_backup


class DatasetSize(TypedDict):
    name: str
    size: int


class Listing(TypedDict):
    """What ls shows: one JSON object with --json."""

    backup: str
    format_version: int
    tool_version: str
    time_zero: str
    chunk_size: int
    datasets: list[DatasetSize]
    # From the trailer; None when OUT cannot seek, or its trailer is damaged.
    records: int | None
    data_bytes: int | None
    stored_bytes: int | None
    stream_bytes: int | None
    compression_ratio: float | None
    extra: dict[str, object]


def register(subparsers: Subparsers) -> None:
    p = subparsers.add_parser(
        "ls", help="list the datasets of a backup",
        description="Show the datasets of a backup in stream order with their sizes, the time "
                    "zero, chunk size and versions; for a seekable file also the record count "
                    "and stored bytes from the trailer. Records are not verified.")
    p.add_argument("backup", metavar="OUT", help="the backup file, or - for stdin")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    label = backup_label(args.backup)
    trailer, problem = None, None
    with opened_backup(args.backup) as reader:
        header = reader.header
        if reader.seekable:
            try:
                trailer = reader.read_trailer()
            except FormatError as e:
                problem = f"{label}: {e}"  # still show the header, then fail
    info: Listing = {
        "backup": label,
        "format_version": header.format_version,
        "tool_version": header.tool_version,
        "time_zero": header.time_zero,
        "chunk_size": header.chunk_size,
        "datasets": [{"name": d.name, "size": d.size} for d in header.datasets],
        "records": trailer.record_count if trailer else None,
        "data_bytes": trailer.data_bytes if trailer else None,
        "stored_bytes": trailer.stored_bytes if trailer else None,
        "stream_bytes": trailer.stream_bytes if trailer else None,
        # data bytes per stored byte: above 1 when records are compressed
        "compression_ratio": round(trailer.data_bytes / trailer.stored_bytes, 3)
        if trailer and trailer.stored_bytes else None,
        "extra": header.extra,
    }
    print(json.dumps(info, ensure_ascii=False) if args.json else _text(info))
    if problem:
        raise BackupFormatError(problem)
    return 0


def _text(info: Listing) -> str:
    lines = [
        f"{info['backup']}: tzero backup format {info['format_version']}, "
        f"written by tzero {info['tool_version']}",
        f"time zero   {info['time_zero']}",
        f"chunk size  {_human(info['chunk_size'])}",
    ]
    if info["records"] is not None:
        assert info["data_bytes"] is not None and info["stream_bytes"] is not None, "a trailer gives all of them"
        lines.append(f"records     {info['records']}, {_human(info['data_bytes'])} of data, "
                     f"stream {_human(info['stream_bytes'])}")
        if info["compression_ratio"] is not None:
            assert info["stored_bytes"] is not None, "a trailer gives all of them"
            lines.append(f"compression {_human(info['stored_bytes'])} stored, "
                         f"ratio {info['compression_ratio']:.2f}")
    width = max([len(d["name"]) for d in info["datasets"]] + [7])
    lines.append(f"{'dataset':<{width}}  size")
    lines += [f"{d['name']:<{width}}  {_human(d['size'])}" for d in info["datasets"]]
    return "\n".join(lines)


def _human(n: int) -> str:
    """N bytes as users read it: '4194304 (4 MiB)'; exact bytes first, always."""
    for shift, unit in ((40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")):
        if n >= 1 << shift:
            value = n / (1 << shift)
            return f"{n} ({value:.4g} {unit})"
    return f"{n}"
