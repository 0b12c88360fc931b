"""The stream's byte layout: constants, structs, the header, and the rules every part obeys.

Every integer is little-endian. Every check and the digest are xxh3-128 (seed 0),
stored in xxhash's canonical (big-endian) byte order. docs/format.md is the full
specification; the tables next to each struct here are a summary.

    stream   = preamble, header JSON, header check, record*, index, trailer
    record   = record head (32), payload (stored length), record check (16)
    index    = index head (16), entry (32) * count, index check (16)
    trailer  = trailer fields (40), trailer check (16), stream digest (16), end magic (8)

    digest   = xxh3-128 of every byte before it, record payloads left out (version 2;
               version 1 hashed them too)

    Version 3 is an incremental stream: its header names its base (file name, digest), a
    record may be a zero record (flag ZERO, no payload), and a range no record covers is
    the base's. Full streams are still written as version 2.
"""

import datetime
import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, TypedDict, TypeGuard

from backupformat.codec import CODEC_RAW, CODECS

FORMAT_VERSION = 2  # a full stream
INCREMENTAL_VERSION = 3  # a stream of the changes since a base (docs/format.md, section 10)
SUPPORTED_VERSIONS = (1, 2, 3)
RECORD_ZERO = 0x01  # record flag (version 3): LENGTH zero bytes, no payload
CHECKSUM = "xxh3-128"

MAGIC = b"\x89TZB\r\n\x1a\n"  # 8-bit and line-ending damage both break it, as in PNG
END_MAGIC = b"\x89TZE\r\n\x1a\n"
RECORD_TAG = b"RECD"
INDEX_TAG = b"INDX"
TRAILER_TAG = b"TRLR"


# Bounds a reader enforces before trusting a length, so a damaged length cannot
# make it allocate gigabytes; the writer enforces the same so it never writes
# what it could not read back.
MAX_HEADER_LENGTH = 16 << 20
MAX_RECORD_LENGTH = 64 << 20
MAX_DATASET_SIZE = (1 << 63) - 1

# preamble: magic 8s | format version u32 | header JSON length u32
PREAMBLE = struct.Struct("<8sII")
# record head: tag 4s | codec u8 | flags u8 | reserved u16 | dataset u32 |
#              length u32 | offset u64 | stored length u32 | reserved u32
RECORD_HEAD = struct.Struct("<4sBBHIIQII")
# index head: tag 4s | reserved u32 | record count u64
INDEX_HEAD = struct.Struct("<4sIQ")
# index entry: dataset u32 | codec u8 | flags u8 | reserved u16 | offset u64 |
#              length u32 | stored length u32 | record position u64
INDEX_ENTRY = struct.Struct("<IBBHQIIQ")
# trailer fields: tag 4s | reserved u32 | index position u64 | record count u64 |
#                 data bytes u64 | stored bytes u64
TRAILER_FIELDS = struct.Struct("<4sIQQQQ")
CHECK_SIZE = 16
TRAILER_SIZE = TRAILER_FIELDS.size + CHECK_SIZE + CHECK_SIZE + len(END_MAGIC)

READ_SLICE = 1 << 20  # index entries are read and hashed in slices this big


def payloads_in_digest(version: int) -> bool:
    """Whether the stream digest of VERSION hashes record payloads. Version 1 hashes every
    byte; from version 2 a payload is left out, since the record check right after it
    already hashes it and is itself in the digest: one hash pass over the data, not two."""
    return version == 1


class FormatError(Exception):
    """The stream is damaged, truncated, or not a tzero backup.

    `section` is "header", "records", "index", "trailer", or "chain" for a stream that is
    not the base its incremental recorded. For a problem in or between records, `dataset`
    (a name) and `offset` say where: the bad record as its head claims, or the end of the
    last good record when the stream breaks between records (or its head is unusable).
    `layer`, set by chain.py, is which stream of a chain (0: the newest) it is about.
    """

    def __init__(self, reason: str, *, section: str = "records", dataset: str | None = None,
                 offset: int | None = None) -> None:
        self.reason = reason
        self.section = section
        self.dataset = dataset
        self.offset = offset
        self.layer: int | None = None
        if dataset is not None:
            where = f"dataset {dataset!r} at offset {offset}"
        else:
            where = section
        super().__init__(f"{where}: {reason}")


class Where(TypedDict, total=False):
    """Where a problem is, as FormatError's keyword arguments: a section, or a dataset and offset."""

    section: str
    dataset: str
    offset: int


class Dataset(NamedTuple):
    name: str
    size: int


class Record(NamedTuple):
    dataset_index: int
    dataset: str
    offset: int
    data: bytes | memoryview  # empty for a zero record
    zeros: int = 0  # a zero record (version 3): this many zero bytes at OFFSET

    @property
    def length(self) -> int:
        return self.zeros or len(self.data)


class IndexEntry(NamedTuple):
    dataset_index: int
    codec: int
    offset: int
    length: int
    stored_length: int
    position: int  # of the record head, in bytes from the start of the stream
    flags: int = 0  # RECORD_ZERO for a zero record


class Trailer(NamedTuple):
    index_position: int
    record_count: int
    data_bytes: int
    stored_bytes: int
    digest: str  # hex
    stream_bytes: int


def dataset_name_problem(name: object) -> str | None:
    """Why NAME cannot be a dataset name, or None. Restore makes NAME.img from it."""
    if not isinstance(name, str) or not name:
        return "a dataset name must be a non-empty string"
    if len(name.encode("utf-8", "surrogatepass")) > 255:
        return f"dataset name {name[:40]!r}... is longer than 255 bytes"
    if name in (".", "..") or "/" in name or any(ord(c) < 32 or ord(c) == 127 for c in name):
        return f"dataset name {name!r} must not be '.', '..', or hold '/' or control characters"
    return None


class Base(NamedTuple):
    """What an incremental stream says of the stream it counts from."""

    file: str  # its file name, found in the incremental's own directory
    digest: str  # its stream digest, hex
    time_zero: str  # ISO 8601


@dataclass(frozen=True)
class Header:
    """What a stream says about itself before its records. Immutable once made."""

    tool_version: str
    time_zero: str  # ISO 8601
    chunk_size: int
    datasets: list[Dataset]  # in stream order
    extra: dict[str, object] = field(default_factory=dict)  # free JSON object for the layers above
    format_version: int = FORMAT_VERSION
    base: Base | None = None  # version 3 (incremental) only, and required there

    def __post_init__(self) -> None:
        # Accept plain (name, size) pairs; anything stranger is left for problem().
        if isinstance(self.datasets, (list, tuple)) and all(
                isinstance(d, (list, tuple)) and len(d) == 2 for d in self.datasets):
            object.__setattr__(self, "datasets", [Dataset(*d) for d in self.datasets])

    def index_of(self, name: str) -> int:
        """The position of dataset NAME in stream order; KeyError if absent."""
        for i, d in enumerate(self.datasets):
            if d.name == name:
                return i
        raise KeyError(name)

    def problem(self) -> str | None:
        """Why this header cannot be written or trusted, or None."""
        # A header made from JSON holds whatever the JSON held until this returns None, so the
        # fields are checked as plain objects, whatever their declared types.
        tool_version: object = self.tool_version
        chunk_size: object = self.chunk_size
        extra: object = self.extra
        datasets: object = self.datasets
        if not isinstance(tool_version, str):
            return "tool_version must be a string"
        if not _is_iso8601(self.time_zero):
            return f"time_zero {self.time_zero!r} is not an ISO 8601 time"
        if not is_int(chunk_size) or chunk_size <= 0:
            return f"chunk_size {chunk_size!r} must be a positive integer"
        if not isinstance(extra, dict):
            return "extra must be a JSON object"
        if not isinstance(datasets, (list, tuple)):
            return "datasets must be a list"
        problem = _base_problem(self.base, self.format_version)
        if problem:
            return problem
        seen = set()
        for d in datasets:
            if not isinstance(d, Dataset):
                return "each dataset must be a (name, size) pair"
            bad = dataset_name_problem(d[0])
            if bad:
                return bad
            if d[0] in seen:
                return f"dataset name {d[0]!r} appears twice"
            seen.add(d[0])
            if not is_int(d[1]) or not 0 <= d[1] <= MAX_DATASET_SIZE:
                return f"dataset {d[0]!r}: size {d[1]!r} must be an integer from 0 to 2^63-1"
        return None

    def to_json(self) -> bytes:
        doc = {
            "format_version": self.format_version,
            "tool_version": self.tool_version,
            "time_zero": self.time_zero,
            "chunk_size": self.chunk_size,
            "checksum": CHECKSUM,
            "datasets": [{"name": d.name, "size": d.size} for d in self.datasets],
            "extra": self.extra,
        }
        if self.base is not None:
            doc["base"] = self.base._asdict()
        return json.dumps(doc, ensure_ascii=False, sort_keys=True,
                          separators=(",", ":")).encode("utf-8")

    @classmethod
    def from_json(cls, body: bytes) -> "Header":
        """Parse and validate a header body; FormatError(section="header") if unusable.

        Keys this version does not know are ignored (see the versioning policy).
        """
        try:
            doc = json.loads(body.decode("utf-8"))
        except ValueError as e:  # UnicodeDecodeError and JSONDecodeError too
            raise FormatError(f"header is not JSON: {e}", section="header") from None
        try:
            if not isinstance(doc, dict):
                raise _HeaderProblem("header is not a JSON object")
            if doc["checksum"] != CHECKSUM:
                raise _HeaderProblem(f"unsupported checksum {doc['checksum']!r} "
                                     f"(this tzero knows {CHECKSUM})")
            datasets = [Dataset(d["name"], d["size"]) for d in doc["datasets"]]
            base = doc.get("base")
            if base is not None:
                if not isinstance(base, dict):
                    raise _HeaderProblem("base must be a JSON object")
                base = Base(base["file"], base["digest"], base["time_zero"])
            header = cls(tool_version=doc["tool_version"], time_zero=doc["time_zero"],
                         chunk_size=doc["chunk_size"], datasets=datasets,
                         extra=doc.get("extra", {}), format_version=doc["format_version"], base=base)
        except _HeaderProblem as e:
            raise FormatError(str(e), section="header") from None
        except KeyError as e:
            raise FormatError(f"header has no {e.args[0]!r}", section="header") from None
        except (ValueError, TypeError) as e:
            raise FormatError(f"header is malformed: {e}", section="header") from None
        problem = header.problem()
        if problem:
            raise FormatError(problem, section="header")
        return header


class _HeaderProblem(Exception):
    pass


def _base_problem(base: object, version: int) -> str | None:
    """Why BASE cannot be the base member of a header of VERSION, or None."""
    if version < INCREMENTAL_VERSION:
        return None if base is None else f"a version {version} stream cannot name a base"
    if not isinstance(base, Base):
        return f"a version {version} stream names its base"
    problem = file_name_problem(base.file)
    if problem:
        return f"base: {problem}"
    digest: object = base.digest
    if not isinstance(digest, str) or len(digest) != 2 * CHECK_SIZE or digest.strip("0123456789abcdef"):
        return f"base digest {digest!r} is not {2 * CHECK_SIZE} lowercase hex digits"
    if not _is_iso8601(base.time_zero):
        return f"base time_zero {base.time_zero!r} is not an ISO 8601 time"
    return None


def file_name_problem(name: object) -> str | None:
    """Why NAME cannot be a base's file name, or None: it is looked up beside the incremental,
    so it must stay there (the rules of dataset names)."""
    problem = dataset_name_problem(name)
    return problem.replace("dataset name", "file name") if problem else None


def is_int(v: object) -> TypeGuard[int]:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_iso8601(v: object) -> bool:
    if not isinstance(v, str):
        return False  # fromisoformat would raise TypeError
    try:
        datetime.datetime.fromisoformat(v)
    except ValueError:
        return False
    return True


def codec_problem(codec: int, flags: int, reserved: int, reserved2: int, length: int, stored: int,
                  version: int) -> str | None:
    if reserved or reserved2 or flags & ~RECORD_ZERO or (flags and version < INCREMENTAL_VERSION):
        return "reserved record fields are not zero"
    if flags & RECORD_ZERO:
        return None if codec == CODEC_RAW and stored == 0 else "a zero record stores bytes"
    if codec not in CODECS:
        return f"unknown record codec {codec}"
    if codec == CODEC_RAW and stored != length:
        return f"raw record stores {stored} bytes for a length of {length}"
    if stored == 0:
        return "record stores no bytes"
    return None


def place_problem(datasets: Sequence[Dataset], last_ds: int, lowest: int, ds: int, offset: int,
                  length: int) -> str | None:
    """Why a record (DS, OFFSET, LENGTH) cannot follow one of LAST_DS ending at LOWEST."""
    if ds >= len(datasets):
        return f"record names dataset number {ds}, the header has {len(datasets)}"
    if ds < last_ds:
        return (f"record of dataset {datasets[ds].name!r} after dataset "
                f"{datasets[last_ds].name!r}: out of order")
    if ds == last_ds and offset < lowest:
        return f"record out of order: starts before the end of the previous one ({lowest})"
    if length == 0:
        return "record of length 0"
    if offset + length > datasets[ds].size:
        return f"record of {length} bytes goes beyond the dataset size {datasets[ds].size}"
    return None
