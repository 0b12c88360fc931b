"""The tzero backup stream: its byte layout, a writer and a reader.

Layering: this module is the bottom of the stack. It imports only the standard
library and xxhash, knows nothing of sessions, exports or the CLI, and raises its
own FormatError; the commands above translate that into their errors. The full
specification is docs/format.md; the tables next to each struct here are a summary.

    stream   = preamble, header JSON, header check, record*, index, trailer
    record   = record head (32), payload (stored length), record check (16)
    index    = index head (16), entry (32) * count, index check (16)
    trailer  = trailer fields (40), trailer check (16), stream digest (16), end magic (8)

Every integer is little-endian. Every check and the digest are xxh3-128 (seed 0),
stored in xxhash's canonical (big-endian) byte order.

The writer never seeks, so a stream can go down a pipe. The reader reads front to
back from anything (records()), or, on a seekable file, from the end: trailer,
then index, then any record (read_trailer(), read_index(), read_record()).
"""

import bisect
import datetime
import json
import struct
from dataclasses import dataclass, field
from typing import NamedTuple

import xxhash

FORMAT_VERSION = 1
SUPPORTED_VERSIONS = (1,)
CHECKSUM = "xxh3-128"

MAGIC = b"\x89TZB\r\n\x1a\n"  # 8-bit and line-ending damage both break it, as in PNG
END_MAGIC = b"\x89TZE\r\n\x1a\n"
RECORD_TAG = b"RECD"
INDEX_TAG = b"INDX"
TRAILER_TAG = b"TRLR"

CODEC_RAW = 0
RESERVED_CODECS = {1: "zstd"}  # issue 3; a reader without it must refuse, not misread

# Bounds a reader enforces before trusting a length, so a damaged length cannot
# make it allocate gigabytes; the writer enforces the same so it never writes
# what it could not read back.
MAX_HEADER_LENGTH = 16 << 20
MAX_RECORD_LENGTH = 64 << 20
MAX_DATASET_SIZE = (1 << 63) - 1

# preamble: magic 8s | format version u32 | header JSON length u32
_PREAMBLE = struct.Struct("<8sII")
# record head: tag 4s | codec u8 | flags u8 | reserved u16 | dataset u32 |
#              length u32 | offset u64 | stored length u32 | reserved u32
_RECORD = struct.Struct("<4sBBHIIQII")
# index head: tag 4s | reserved u32 | record count u64
_INDEX_HEAD = struct.Struct("<4sIQ")
# index entry: dataset u32 | codec u8 | flags u8 | reserved u16 | offset u64 |
#              length u32 | stored length u32 | record position u64
_ENTRY = struct.Struct("<IBBHQIIQ")
# trailer fields: tag 4s | reserved u32 | index position u64 | record count u64 |
#                 data bytes u64 | stored bytes u64
_TRAILER = struct.Struct("<4sIQQQQ")
_CHECK = 16
TRAILER_SIZE = _TRAILER.size + _CHECK + _CHECK + len(END_MAGIC)

_READ_SLICE = 1 << 20  # index entries are read and hashed in slices this big


class FormatError(Exception):
    """The stream is damaged, truncated, or not a tzero backup.

    `section` is "header", "records", "index" or "trailer". For a problem in or
    between records, `dataset` (a name) and `offset` say where: the bad record as
    its head claims, or the end of the last good record when the stream breaks
    between records (or its head is unusable).
    """

    def __init__(self, reason, *, section="records", dataset=None, offset=None):
        self.reason = reason
        self.section = section
        self.dataset = dataset
        self.offset = offset
        if dataset is not None:
            where = f"dataset {dataset!r} at offset {offset}"
        else:
            where = section
        super().__init__(f"{where}: {reason}")


class Dataset(NamedTuple):
    name: str
    size: int


class Record(NamedTuple):
    dataset_index: int
    dataset: str
    offset: int
    data: bytes


class IndexEntry(NamedTuple):
    dataset_index: int
    codec: int
    offset: int
    length: int
    stored_length: int
    position: int  # of the record head, in bytes from the start of the stream


class Trailer(NamedTuple):
    index_position: int
    record_count: int
    data_bytes: int
    stored_bytes: int
    digest: str  # hex
    stream_bytes: int


def dataset_name_problem(name) -> str | None:
    """Why NAME cannot be a dataset name, or None. Restore makes NAME.img from it."""
    if not isinstance(name, str) or not name:
        return "a dataset name must be a non-empty string"
    if len(name.encode("utf-8", "surrogatepass")) > 255:
        return f"dataset name {name[:40]!r}... is longer than 255 bytes"
    if name in (".", "..") or "/" in name or any(ord(c) < 32 or ord(c) == 127 for c in name):
        return f"dataset name {name!r} must not be '.', '..', or hold '/' or control characters"
    return None


@dataclass(frozen=True)
class Header:
    """What a stream says about itself before its records. Immutable once made."""

    tool_version: str
    time_zero: str  # ISO 8601
    chunk_size: int
    datasets: list  # of Dataset, in stream order
    extra: dict = field(default_factory=dict)  # free JSON object for the layers above
    format_version: int = FORMAT_VERSION

    def __post_init__(self):
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
        if not isinstance(self.tool_version, str):
            return "tool_version must be a string"
        if not _is_iso8601(self.time_zero):
            return f"time_zero {self.time_zero!r} is not an ISO 8601 time"
        if not _is_int(self.chunk_size) or self.chunk_size <= 0:
            return f"chunk_size {self.chunk_size!r} must be a positive integer"
        if not isinstance(self.extra, dict):
            return "extra must be a JSON object"
        if not isinstance(self.datasets, (list, tuple)):
            return "datasets must be a list"
        seen = set()
        for d in self.datasets:
            if not isinstance(d, Dataset):
                return "each dataset must be a (name, size) pair"
            bad = dataset_name_problem(d[0])
            if bad:
                return bad
            if d[0] in seen:
                return f"dataset name {d[0]!r} appears twice"
            seen.add(d[0])
            if not _is_int(d[1]) or not 0 <= d[1] <= MAX_DATASET_SIZE:
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
            header = cls(tool_version=doc["tool_version"], time_zero=doc["time_zero"],
                         chunk_size=doc["chunk_size"], datasets=datasets,
                         extra=doc.get("extra", {}), format_version=doc["format_version"])
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


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_iso8601(v) -> bool:
    try:
        datetime.datetime.fromisoformat(v)
    except (TypeError, ValueError):
        return False
    return True


def _write_all(out, buf) -> None:
    # Buffered files write everything; a raw file may write less, so loop. None
    # (an object that does not report) is taken as everything written.
    view = memoryview(buf)
    while view.nbytes:
        n = out.write(view)
        if n is None or n >= view.nbytes:
            return
        view = view[n:]


class StreamWriter:
    """Writes one stream front to back to OUT, which need not seek (a pipe will do).

    The preamble and header are written by the constructor. Records must come in
    stream order (see write()); finish() writes the index and the trailer. A
    misuse is a programming error and raises ValueError without writing. If OUT
    raises, the stream is left incomplete and the writer refuses further use:
    the caller aborts the backup.

    Memory: the index waits in memory until finish(), 32 bytes per record.
    """

    def __init__(self, out, header: Header):
        problem = header.problem()
        if problem:
            raise ValueError(problem)
        if header.format_version != FORMAT_VERSION:
            raise ValueError(f"this writer writes format version {FORMAT_VERSION} only")
        self._out = out
        self._datasets = list(header.datasets)
        self._digest = xxhash.xxh3_128()  # every byte before the digest itself
        self._index = bytearray()
        self._records = 0
        self._data_bytes = 0
        self._stored_bytes = 0
        self._dataset = 0  # the dataset of the last record (0 before any)
        self._next_offset = 0  # where that dataset's next record may start
        self._state = "open"  # then "finished", or "broken" after OUT raised
        self.bytes_written = 0
        try:
            body = header.to_json()
        except TypeError as e:
            raise ValueError(f"header extra is not JSON: {e}") from None
        if len(body) > MAX_HEADER_LENGTH:
            raise ValueError(f"header is {len(body)} bytes, more than {MAX_HEADER_LENGTH}")
        preamble = _PREAMBLE.pack(MAGIC, FORMAT_VERSION, len(body))
        check = xxhash.xxh3_128(preamble)
        check.update(body)
        self._guarded(self._emit, preamble, body, check.digest())

    def write(self, dataset_index: int, offset: int, data) -> None:
        """Append one record: DATA (bytes-like, 1 to MAX_RECORD_LENGTH bytes) at OFFSET.

        Order: dataset_index never decreases; within a dataset, a record starts
        at or after the end of the previous one; offset + len(data) is within
        the dataset. DATA is not copied.
        """
        self._check_open()
        view = memoryview(data)
        if view.format != "B" or view.ndim != 1:
            view = view.cast("B")
        length = view.nbytes
        self._check_place(dataset_index, offset, length)
        head = _RECORD.pack(RECORD_TAG, CODEC_RAW, 0, 0, dataset_index, length, offset, length, 0)
        check = xxhash.xxh3_128(head)
        check.update(view)
        position = self.bytes_written
        self._guarded(self._emit, head, view, check.digest())
        self._index += _ENTRY.pack(dataset_index, CODEC_RAW, 0, 0, offset, length, length, position)
        self._records += 1
        self._data_bytes += length
        self._stored_bytes += length
        self._dataset = dataset_index
        self._next_offset = offset + length

    def finish(self) -> dict:
        """Write the index and trailer, flush OUT; return the stream's summary.

        Returns dict(bytes, records, data_bytes, stored_bytes, digest (hex)).
        """
        self._check_open()
        index_position = self.bytes_written
        index_head = _INDEX_HEAD.pack(INDEX_TAG, 0, self._records)
        index_check = xxhash.xxh3_128(index_head)
        index_check.update(self._index)
        fields = _TRAILER.pack(TRAILER_TAG, 0, index_position, self._records,
                               self._data_bytes, self._stored_bytes)
        self._guarded(self._emit, index_head, self._index, index_check.digest(),
                      fields, xxhash.xxh3_128(fields).digest())
        digest = self._digest.digest()
        self._guarded(self._emit, digest, END_MAGIC)
        if hasattr(self._out, "flush"):
            self._guarded(self._out.flush)
        self._state = "finished"
        self._index = bytearray()
        return dict(bytes=self.bytes_written, records=self._records,
                    data_bytes=self._data_bytes, stored_bytes=self._stored_bytes,
                    digest=digest.hex())

    def _emit(self, *bufs) -> None:
        for buf in bufs:
            self._digest.update(buf)
            _write_all(self._out, buf)
            self.bytes_written += memoryview(buf).nbytes

    def _guarded(self, fn, *args) -> None:
        try:
            fn(*args)
        except BaseException:
            self._state = "broken"
            raise

    def _check_open(self) -> None:
        if self._state != "open":
            raise ValueError(f"the stream writer is {self._state}")

    def _check_place(self, dataset_index, offset, length) -> None:
        if not _is_int(dataset_index) or not 0 <= dataset_index < len(self._datasets):
            raise ValueError(f"dataset index {dataset_index!r} is not in the header")
        if dataset_index < self._dataset:
            raise ValueError(f"dataset {dataset_index} after dataset {self._dataset}: "
                             "datasets must come in header order")
        lowest = self._next_offset if dataset_index == self._dataset else 0
        if not _is_int(offset) or offset < lowest:
            raise ValueError(f"record at offset {offset!r} of dataset {dataset_index} "
                             f"overlaps or precedes the previous one (next free offset {lowest})")
        if not 0 < length <= MAX_RECORD_LENGTH:
            raise ValueError(f"record length {length} is not within 1..{MAX_RECORD_LENGTH}")
        size = self._datasets[dataset_index].size
        if offset + length > size:
            raise ValueError(f"record {offset}+{length} goes beyond dataset "
                             f"{dataset_index} of size {size}")


class StreamReader:
    """Reads a stream from F, a binary file; checks the header at once.

    Front to back (any F, a pipe included): iterate records() once; each record
    is checked before it is yielded, and the index, trailer and digest after
    the last one, so a consumer has seen a verified stream only when the
    iteration ends without FormatError. `trailer` is set then.

    From the end (seekable F only): read_trailer(), read_index(), read_record().
    They check what they read, not the whole stream, and put F's position back.
    """

    def __init__(self, f):
        self._f = f
        self._digest = xxhash.xxh3_128()
        self.position = 0  # bytes consumed front to back
        self.seekable = _seekable(f)
        # Stream positions count from the stream's first byte, which need not be
        # the file's (stdin redirected from a file that was partly read).
        self._base = f.tell() if self.seekable else 0
        self.trailer = None
        self._started = False
        self.header = self._read_header()
        self._data_start = self.position

    # -- front to back --------------------------------------------------------

    def _read(self, n, what, where, hashed=True) -> bytes:
        data = _read_exact(self._f, n)
        if len(data) != n:
            raise FormatError(f"truncated in the {what}: expected {n} bytes, got {len(data)}", **where)
        if hashed:
            self._digest.update(data)
        self.position += n
        return data

    def _read_header(self) -> Header:
        where = dict(section="header")
        start = _read_exact(self._f, _PREAMBLE.size)
        if not start:
            raise FormatError("empty, not a tzero backup", **where)
        if not MAGIC.startswith(start[:len(MAGIC)]):
            raise FormatError("bad magic, not a tzero backup", **where)
        if len(start) < _PREAMBLE.size:
            raise FormatError(f"truncated in the preamble: expected {_PREAMBLE.size} bytes, "
                              f"got {len(start)}", **where)
        self._digest.update(start)
        self.position = len(start)
        _, version, length = _PREAMBLE.unpack(start)
        if version not in SUPPORTED_VERSIONS:
            readable = ", ".join(map(str, SUPPORTED_VERSIONS))
            raise FormatError(f"unsupported format version {version} "
                              f"(this tzero reads {readable})", **where)
        if length > MAX_HEADER_LENGTH:
            raise FormatError(f"header length {length} exceeds the limit of "
                              f"{MAX_HEADER_LENGTH}", **where)
        body = self._read(length, "header", where)
        check = self._read(_CHECK, "header checksum", where)
        expected = xxhash.xxh3_128(start)
        expected.update(body)
        if expected.digest() != check:
            raise FormatError("header checksum mismatch", **where)
        header = Header.from_json(body)
        if header.format_version != version:
            raise FormatError(f"header says format version {header.format_version}, "
                              f"preamble says {version}", **where)
        return header

    def records(self):
        """Yield every Record in stream order, then check index, trailer and digest.

        Raises FormatError at the first problem; nothing after it is yielded.
        Record.data is the stored payload (raw: the dataset bytes themselves).
        """
        if self._started:
            raise ValueError("records() reads the stream once")
        self._started = True
        datasets = self.header.datasets
        implied_index = xxhash.xxh3_128()  # hash of the index the records imply
        count = data_bytes = stored_bytes = 0
        ds, next_offset = 0, 0
        while True:
            position = self.position
            rec = self._read_record(ds, next_offset if count else 0)
            if rec is None:
                break
            head, payload = rec
            _, codec, _, _, ds, length, offset, stored, _ = _RECORD.unpack(head)
            implied_index.update(_ENTRY.pack(ds, codec, 0, 0, offset, length, stored, position))
            count += 1
            data_bytes += length
            stored_bytes += stored
            next_offset = offset + length
            yield Record(ds, datasets[ds].name, offset, payload)
        self._check_index(position, count, implied_index.digest())
        self._check_trailer(position, count, data_bytes, stored_bytes)

    def _read_record(self, last_ds, lowest):
        """The next record as (head, payload), checked against its check and the
        ordering rules given the last one (LAST_DS ending at LOWEST); None at the index."""
        datasets = self.header.datasets
        between = self._between(last_ds, lowest)
        position = self.position
        tag = self._read(4, "stream after the last record", between)
        if tag == INDEX_TAG:
            return None
        if tag != RECORD_TAG:
            raise FormatError(f"expected a record or the index at stream byte {position}, "
                              f"found {tag!r}", **between)
        head = tag + self._read(_RECORD.size - 4, "record head", between)
        _, codec, flags, reserved, ds, length, offset, stored, reserved2 = _RECORD.unpack(head)
        where = dict(dataset=datasets[ds].name, offset=offset) if ds < len(datasets) else between
        if stored > MAX_RECORD_LENGTH:
            raise FormatError(f"record length {stored} exceeds the limit of "
                              f"{MAX_RECORD_LENGTH}", **where)
        payload = self._read(stored, "record payload", where)
        check = xxhash.xxh3_128(head)
        check.update(payload)
        if check.digest() != self._read(_CHECK, "record checksum", where):
            raise FormatError("record checksum mismatch", **where)
        problem = (_codec_problem(codec, flags, reserved, reserved2, length, stored)
                   or _place_problem(datasets, last_ds, lowest, ds, offset, length))
        if problem:
            raise FormatError(problem, **where)
        return head, payload

    def _between(self, ds, offset) -> dict:
        """Where the stream is between records: the end of the last good one."""
        if not self.header.datasets:
            return dict(section="records")
        return dict(dataset=self.header.datasets[ds].name, offset=offset)

    def _check_index(self, index_position, count, implied) -> None:
        where = dict(section="index")
        rest = self._read(_INDEX_HEAD.size - 4, "index head", where)
        _, reserved, listed = _INDEX_HEAD.unpack(INDEX_TAG + rest)
        check = xxhash.xxh3_128(INDEX_TAG + rest)
        if reserved:
            raise FormatError("reserved field is not zero", **where)
        if listed != count:
            raise FormatError(f"index lists {listed} records, the stream holds {count}", **where)
        entries = xxhash.xxh3_128()
        remaining = count * _ENTRY.size
        while remaining:
            piece = self._read(min(remaining, _READ_SLICE), "index entries", where)
            check.update(piece)
            entries.update(piece)
            remaining -= len(piece)
        if check.digest() != self._read(_CHECK, "index checksum", where):
            raise FormatError("index checksum mismatch", **where)
        if entries.digest() != implied:
            raise FormatError("index does not match the records", **where)

    def _check_trailer(self, index_position, count, data_bytes, stored_bytes) -> None:
        where = dict(section="trailer")
        fields = self._read(_TRAILER.size, "trailer", where)
        if xxhash.xxh3_128(fields).digest() != self._read(_CHECK, "trailer checksum", where):
            raise FormatError("trailer checksum mismatch", **where)
        tag, reserved, *values = _TRAILER.unpack(fields)
        expected = [index_position, count, data_bytes, stored_bytes]
        if tag != TRAILER_TAG or reserved or values != expected:
            raise FormatError(f"trailer says (index position, records, data bytes, stored bytes) "
                              f"= {tuple(values)}, the stream has {tuple(expected)}", **where)
        computed = self._digest.digest()
        digest = self._read(_CHECK, "stream digest", where, hashed=False)
        if digest != computed:
            raise FormatError("stream digest mismatch", **where)
        if self._read(len(END_MAGIC), "end magic", where, hashed=False) != END_MAGIC:
            raise FormatError("bad end magic", **where)
        if _read_exact(self._f, 1):
            raise FormatError("unexpected bytes after the end magic", **where)
        self.trailer = Trailer(index_position, count, data_bytes, stored_bytes,
                               digest.hex(), self.position)

    # -- from the end (seekable files) ------------------------------------------

    def read_trailer(self) -> Trailer:
        """The trailer, read from the end of a seekable F and checked on its own.

        The stream digest is returned but not verified: that takes records().
        """
        with _kept_position(self._f):
            end = self._f.seek(0, 2) - self._base
            smallest = self._data_start + _INDEX_HEAD.size + _CHECK + TRAILER_SIZE
            where = dict(section="trailer")
            if end < smallest:
                raise FormatError(f"stream is {end} bytes, too short to hold an index "
                                  "and a trailer", **where)
            self._f.seek(self._base + end - TRAILER_SIZE)
            raw = _read_exact(self._f, TRAILER_SIZE)
        if raw[-len(END_MAGIC):] != END_MAGIC:
            raise FormatError("bad end magic (an incomplete backup?)", **where)
        fields, check = raw[:_TRAILER.size], raw[_TRAILER.size:_TRAILER.size + _CHECK]
        if xxhash.xxh3_128(fields).digest() != check:
            raise FormatError("trailer checksum mismatch", **where)
        tag, reserved, index_position, count, data_bytes, stored_bytes = _TRAILER.unpack(fields)
        index_end = index_position + _INDEX_HEAD.size + count * _ENTRY.size + _CHECK
        if tag != TRAILER_TAG or reserved or index_position < self._data_start \
                or index_end != end - TRAILER_SIZE:
            raise FormatError("trailer does not describe an index that ends where it starts", **where)
        digest = raw[_TRAILER.size + _CHECK:-len(END_MAGIC)]
        return Trailer(index_position, count, data_bytes, stored_bytes, digest.hex(), end)

    def read_index(self) -> "Index":
        """The index of a seekable F, checked against the trailer and the ordering rules."""
        trailer = self.read_trailer()
        where = dict(section="index")
        size = _INDEX_HEAD.size + trailer.record_count * _ENTRY.size + _CHECK
        with _kept_position(self._f):
            self._f.seek(self._base + trailer.index_position)
            raw = _read_exact(self._f, size)
        if len(raw) != size:
            raise FormatError(f"truncated: expected {size} bytes, got {len(raw)}", **where)
        if xxhash.xxh3_128(raw[:-_CHECK]).digest() != raw[-_CHECK:]:
            raise FormatError("index checksum mismatch", **where)
        tag, reserved, count = _INDEX_HEAD.unpack_from(raw)
        if tag != INDEX_TAG or reserved or count != trailer.record_count:
            raise FormatError("index head does not match the trailer", **where)
        index = Index(self.header, raw[_INDEX_HEAD.size:-_CHECK])
        index.check(self._data_start, trailer)
        return index

    def read_record(self, entry: IndexEntry) -> bytes:
        """The stored payload of the record ENTRY names, checked against its checksum."""
        name = self.header.datasets[entry.dataset_index].name
        where = dict(dataset=name, offset=entry.offset)
        size = _RECORD.size + entry.stored_length + _CHECK
        with _kept_position(self._f):
            self._f.seek(self._base + entry.position)
            raw = _read_exact(self._f, size)
        if len(raw) != size:
            raise FormatError(f"truncated in the record: expected {size} bytes, got {len(raw)}", **where)
        expected_head = _RECORD.pack(RECORD_TAG, entry.codec, 0, 0, entry.dataset_index,
                                     entry.length, entry.offset, entry.stored_length, 0)
        if raw[:_RECORD.size] != expected_head:
            raise FormatError("record head does not match the index", **where)
        if xxhash.xxh3_128(raw[:-_CHECK]).digest() != raw[-_CHECK:]:
            raise FormatError("record checksum mismatch", **where)
        return raw[_RECORD.size:-_CHECK]


class Index:
    """The records of a stream by (dataset, offset), packed at 32 bytes each.

    A sequence of IndexEntry; find() is the lookup random access needs.
    """

    def __init__(self, header: Header, packed: bytes):
        self._header = header
        self._packed = packed

    def __len__(self) -> int:
        return len(self._packed) // _ENTRY.size

    def __getitem__(self, i: int) -> IndexEntry:
        if not 0 <= i < len(self):
            raise IndexError(i)
        ds, codec, _, _, offset, length, stored, position = _ENTRY.unpack_from(
            self._packed, i * _ENTRY.size)
        return IndexEntry(ds, codec, offset, length, stored, position)

    def find(self, dataset_index: int, offset: int) -> IndexEntry | None:
        """The entry whose data covers OFFSET of the dataset, or None (a hole: zeros)."""
        i = bisect.bisect_right(self, (dataset_index, offset), key=lambda e: (e.dataset_index, e.offset))
        if i == 0:
            return None
        e = self[i - 1]
        if e.dataset_index == dataset_index and e.offset <= offset < e.offset + e.length:
            return e
        return None

    def check(self, data_start: int, trailer: Trailer) -> None:
        """FormatError unless the entries obey the ordering rules, lie back to back
        from DATA_START to the index, and add up to the trailer's totals."""
        datasets = self._header.datasets
        position, ds, next_offset, data_bytes, stored_bytes = data_start, 0, 0, 0, 0
        for n in range(len(self)):
            _, _, flags, reserved, _, _, _, _ = _ENTRY.unpack_from(self._packed, n * _ENTRY.size)
            e = self[n]
            if e.dataset_index < len(datasets):
                where = dict(dataset=datasets[e.dataset_index].name, offset=e.offset)
            else:
                where = dict(section="index")
            problem = (_codec_problem(e.codec, flags, reserved, 0, e.length, e.stored_length)
                       or _place_problem(datasets, ds, next_offset if n else 0,
                                         e.dataset_index, e.offset, e.length))
            if not problem and e.position != position:
                problem = f"index puts the record at stream byte {e.position}, expected {position}"
            if problem:
                raise FormatError(f"index: {problem}", **where)
            position += _RECORD.size + e.stored_length + _CHECK
            ds, next_offset = e.dataset_index, e.offset + e.length
            data_bytes += e.length
            stored_bytes += e.stored_length
        if (position, data_bytes, stored_bytes) != (trailer.index_position, trailer.data_bytes,
                                                    trailer.stored_bytes):
            raise FormatError("index entries do not add up to the trailer", section="index")


def _codec_problem(codec, flags, reserved, reserved2, length, stored) -> str | None:
    if flags or reserved or reserved2:
        return "reserved record fields are not zero"
    if codec in RESERVED_CODECS:
        return f"record codec {codec} ({RESERVED_CODECS[codec]}) is not supported by this tzero"
    if codec != CODEC_RAW:
        return f"unknown record codec {codec}"
    if stored != length:
        return f"raw record stores {stored} bytes for a length of {length}"
    return None


def _place_problem(datasets, last_ds, lowest, ds, offset, length) -> str | None:
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


def _seekable(f) -> bool:
    try:
        return f.seekable()
    except (AttributeError, OSError, ValueError):
        return False


def _read_exact(f, n) -> bytes:
    """Up to N bytes from F: fewer only at end of file. A raw file may return short reads."""
    data = f.read(n)
    if data is None:
        raise OSError("non-blocking input is not supported")
    if len(data) == n or not data:
        return bytes(data)
    parts = [data]
    got = len(data)
    while got < n:
        more = f.read(n - got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)


class _kept_position:
    """Context manager: put F's position back, so random access can interleave with records()."""

    def __init__(self, f):
        self._f = f

    def __enter__(self):
        if not _seekable(self._f):
            raise FormatError("reading from the end needs a seekable file", section="trailer")
        self._saved = self._f.tell()

    def __exit__(self, *exc):
        self._f.seek(self._saved)
