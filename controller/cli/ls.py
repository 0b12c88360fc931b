"""`tzero ls BACKUP` and `tzero ls DIR`: what a backup holds, or which backups a folder holds,
from their headers (and trailers).

Reads the header, plus the trailer at the end when the backup is a seekable file; it does
not verify the records (that is `tzero verify`). For one incremental backup it finds the
chain of bases as restore does and lists it; a missing or replaced base is listed as far as
it goes, then fails naming it. A folder is listed by reading the first
bytes of each regular file in it: files that are not tzero backups are left out, backups
whose header or trailer is damaged are listed as such (and the exit status is then 4).
"""

import argparse
import datetime
import json
import os
from typing import TypedDict

from backupformat import FormatError, Header, StreamReader
from backupformat.spec import MAGIC
from common.units import human_size
from controller.cli.args import Subparsers, command
from controller.errors import BackupFormatError, TzeroError
from controller.restore.chain import opened_chain
from controller.restore.verify import backup_label, opened_backup

DESCRIPTION = """\
Show what a backup holds, from its header and trailer: the time zero, the label and note
given at backup time, the datasets in stream order with their sizes, the chunk size, the
record count and the bytes stored. Records are not verified (tzero verify does that).

Given a folder, list the backups in it, oldest time zero first: one line each with the
time zero (in this host's time zone), the label, the kind, the datasets, their total
size and the file's size. Files that are not tzero backups are left out; backups still
being written (FILE.partial) or cut short show as incomplete."""

EXAMPLES = (
    ("tzero ls nightly.tzb", "what one backup holds"),
    ("tzero ls /srv/backups", "every backup in a folder, oldest first"),
    ("tzero ls /srv/backups --json | jq -r '.backups[] | select(.label == \"nightly\") | .backup'",
     "the files of the backups labelled nightly"),
)


class DatasetSize(TypedDict):
    name: str
    size: int


class ChainMember(TypedDict):
    backup: str
    kind: str
    time_zero: str


class Listing(TypedDict):
    """What ls shows of one backup: one JSON object with --json (docs/json.md)."""

    backup: str
    format_version: int
    tool_version: str
    time_zero: str
    label: str | None
    note: str | None
    kind: str  # "full" or "incremental"
    base: dict[str, str] | None  # an incremental's base: file, digest, time_zero
    chain: list[ChainMember] | None  # ls of one backup: it, then its bases, newest first
    chunk_size: int
    datasets: list[DatasetSize]
    size: int  # the datasets' sizes added up
    complete: bool  # the trailer was found and checked
    # From the trailer; None when BACKUP cannot seek, or its trailer is damaged.
    records: int | None
    data_bytes: int | None
    stored_bytes: int | None
    stream_bytes: int | None
    compression_ratio: float | None
    extra: dict[str, object]


class DamagedEntry(TypedDict):
    backup: str
    error: str


class FolderListing(TypedDict):
    """`tzero ls DIR --json`."""

    directory: str
    backups: list[Listing]
    damaged: list[DamagedEntry]


def register(subparsers: Subparsers) -> None:
    p = command(subparsers, "ls", summary="list what a backup holds, or the backups in a folder",
                description=DESCRIPTION, examples=EXAMPLES)
    p.add_argument("backup", metavar="BACKUP|DIR",
                   help="a backup file, s3://BUCKET/KEY, - for standard input, or a folder")
    p.add_argument("--json", action="store_true", help="print one JSON object (docs/json.md)")
    p.add_argument("--base", dest="bases", action="append", metavar="FILE",
                   help="a base of an incremental backup (repeat for each), instead of looking beside it")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.backup != "-" and os.path.isdir(args.backup):
        return _run_folder(args)
    info, problem = listing(args.backup, chain_bases=args.bases or [])
    print(json.dumps(info, ensure_ascii=False) if args.json else _text(info))
    if problem:
        raise BackupFormatError(problem)
    return 0


def listing(path: str, chain_bases: list[str] | None = None) -> tuple[Listing, str | None]:
    """What PATH holds, and what is wrong with its trailer or its chain (or None). BackupFormatError
    when even its header cannot be read. With CHAIN_BASES (a list, maybe empty: the --base files),
    an incremental's chain is found and listed."""
    label = backup_label(path)
    trailer, problem = None, None
    chain: list[ChainMember] | None = None
    with opened_backup(path, random_access=True) as reader:
        header = reader.header
        if reader.seekable:
            try:
                trailer = reader.read_trailer()
            except FormatError as e:
                problem = f"{label}: {e}"  # still show the header, then fail
        if chain_bases is not None:
            chain, broken = _chain(path, reader, chain_bases)
            problem = problem or broken
    extra = header.extra
    info: Listing = {
        "backup": label,
        "format_version": header.format_version,
        "tool_version": header.tool_version,
        "time_zero": header.time_zero,
        "label": _text_or_none(extra.get("label")),
        "note": _text_or_none(extra.get("note")),
        "kind": _kind(header),
        "base": header.base._asdict() if header.base else None,
        "chain": chain,
        "chunk_size": header.chunk_size,
        "datasets": [{"name": d.name, "size": d.size} for d in header.datasets],
        "size": sum(d.size for d in header.datasets),
        "complete": trailer is not None,
        "records": trailer.record_count if trailer else None,
        "data_bytes": trailer.data_bytes if trailer else None,
        "stored_bytes": trailer.stored_bytes if trailer else None,
        "stream_bytes": trailer.stream_bytes if trailer else None,
        # data bytes per stored byte: above 1 when records are compressed (not told for an incremental,
        # whose zero records count as data and store nothing)
        "compression_ratio": round(trailer.data_bytes / trailer.stored_bytes, 3)
        if trailer and trailer.stored_bytes and not header.base else None,
        "extra": extra,
    }
    return info, problem


def _kind(header: Header) -> str:
    return "incremental" if header.base else _text_or_none(header.extra.get("kind")) or "full"


def _chain(path: str, reader: StreamReader, bases: list[str]) -> tuple[list[ChainMember], str | None]:
    """The backup and its bases, newest first; or the backup alone and why its chain is broken."""
    try:
        with opened_chain(path, bases, top=reader) as chain:
            return [{"backup": s.label, "kind": _kind(r.header), "time_zero": r.header.time_zero}
                    for s, r in zip(chain.sources, chain.readers, strict=True)], None
    except BackupFormatError as e:
        return [{"backup": backup_label(path), "kind": _kind(reader.header),
                 "time_zero": reader.header.time_zero}], e.message


def _text_or_none(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _text(info: Listing) -> str:
    lines = [
        f"{info['backup']}: tzero backup format {info['format_version']}, "
        f"written by tzero {info['tool_version']}",
        f"time zero   {info['time_zero']}",
    ]
    if info["label"] is not None:
        lines.append(f"label       {info['label']}")
    if info["note"] is not None:
        lines.append(f"note        {info['note']}")
    lines.append(f"chunk size  {human_size(info['chunk_size'])}")
    base = info["base"]
    if base is not None:
        lines.append(f"kind        incremental, since {base['file']} (time zero {base['time_zero']}, "
                     f"digest {base['digest']})")
        if info["chain"] is not None:
            lines.append(f"chain       {len(info['chain'])} backups, oldest first: "
                         + ", ".join(m["backup"] for m in reversed(info["chain"])))
    else:
        lines.append(f"kind        {info['kind']}")
    if info["records"] is not None:
        assert info["data_bytes"] is not None and info["stream_bytes"] is not None, "a trailer gives all of them"
        lines.append(f"records     {info['records']}, {human_size(info['data_bytes'])} of data, "
                     f"stream {human_size(info['stream_bytes'])}")
        if info["compression_ratio"] is not None:
            assert info["stored_bytes"] is not None, "a trailer gives all of them"
            lines.append(f"compression {human_size(info['stored_bytes'])} stored, "
                         f"ratio {info['compression_ratio']:.2f}")
    width = max([len(d["name"]) for d in info["datasets"]] + [7])
    lines.append(f"{'dataset':<{width}}  size")
    lines += [f"{d['name']:<{width}}  {human_size(d['size'])}" for d in info["datasets"]]
    return "\n".join(lines)


def _run_folder(args: argparse.Namespace) -> int:
    found = scan(args.backup)
    if args.json:
        print(json.dumps(found, ensure_ascii=False))
    else:
        print(_folder_text(found))
    if found["damaged"]:
        raise BackupFormatError(f"{len(found['damaged'])} of the backups in {args.backup} are damaged "
                                f"(first: {found['damaged'][0]['error']})")
    return 0


def scan(directory: str) -> FolderListing:
    """The backups in DIRECTORY (not its subfolders), oldest time zero first, and the damaged ones."""
    try:
        names = sorted(os.listdir(directory))
    except OSError as e:
        raise TzeroError(f"listing {directory}: {e.strerror}") from None
    backups: list[Listing] = []
    damaged: list[DamagedEntry] = []
    for name in names:
        path = os.path.join(directory, name)
        if not _looks_like_a_backup(path):
            continue
        try:
            info, problem = listing(path)
        except TzeroError as e:
            damaged.append({"backup": path, "error": e.message})
            continue
        if problem and not path.endswith(".partial"):
            damaged.append({"backup": path, "error": problem})
        backups.append(info)
    backups.sort(key=lambda b: (_instant(b["time_zero"]), b["backup"]))
    return {"directory": directory, "backups": backups, "damaged": damaged}


def _looks_like_a_backup(path: str) -> bool:
    try:
        if not os.path.isfile(path):
            return False
        with open(path, "rb") as f:
            return f.read(len(MAGIC)) == MAGIC
    except OSError:
        return False


def _instant(time_zero: str) -> datetime.datetime:
    try:
        t = datetime.datetime.fromisoformat(time_zero)
    except ValueError:
        return datetime.datetime.min.replace(tzinfo=datetime.UTC)
    return t if t.tzinfo else t.replace(tzinfo=datetime.UTC)


def _local(time_zero: str) -> str:
    """A time zero as an admin looks for it: 'Tue 2026-11-24 22:00:03 UTC', in this host's zone."""
    t = _instant(time_zero)
    if t == datetime.datetime.min.replace(tzinfo=datetime.UTC):
        return time_zero
    return t.astimezone().strftime("%a %Y-%m-%d %H:%M:%S %Z")


def _folder_text(found: FolderListing) -> str:
    if not found["backups"]:
        return f"no tzero backups in {found['directory']}"
    rows = [("TIME ZERO", "LABEL", "KIND", "SIZE", "STORED", "DATASETS", "FILE")]
    for b in found["backups"]:
        stored = human_size(b["stream_bytes"]) if b["stream_bytes"] is not None else "incomplete"
        rows.append((_local(b["time_zero"]), b["label"] or "-", b["kind"], human_size(b["size"]), stored,
                     ",".join(d["name"] for d in b["datasets"]) or "-", os.path.basename(b["backup"])))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[-1] for r in rows)
