"""Reading a stream: front to back from anything, or from the end of a seekable file."""

from collections.abc import Iterator

import xxhash

from backupformat.codec import CodecError, decode
from backupformat.fileobj import InputFile, is_seekable, kept_position, read_exact
from backupformat.index import Index
from backupformat.spec import (
    CHECK_SIZE,
    END_MAGIC,
    INDEX_ENTRY,
    INDEX_HEAD,
    INDEX_TAG,
    MAGIC,
    MAX_HEADER_LENGTH,
    MAX_RECORD_LENGTH,
    PREAMBLE,
    READ_SLICE,
    RECORD_HEAD,
    RECORD_TAG,
    RECORD_ZERO,
    SUPPORTED_VERSIONS,
    TRAILER_FIELDS,
    TRAILER_SIZE,
    TRAILER_TAG,
    FormatError,
    Header,
    IndexEntry,
    Record,
    Trailer,
    Where,
    codec_problem,
    payloads_in_digest,
    place_problem,
)


class StreamReader:
    """Reads a stream from F, a binary file; checks the header at once.

    Front to back (any F, a pipe included): iterate records() once; each record
    is checked before it is yielded, and the index, trailer and digest after
    the last one, so a consumer has seen a verified stream only when the
    iteration ends without FormatError. `trailer` is set then.

    From the end (seekable F only): read_trailer(), read_index(), read_record().
    They check what they read, not the whole stream, and put F's position back.
    """

    def __init__(self, f: InputFile) -> None:
        self._f = f
        self._digest = xxhash.xxh3_128()
        self.position = 0  # bytes consumed front to back
        self.seekable = is_seekable(f)
        # Stream positions count from the stream's first byte, which need not be
        # the file's (stdin redirected from a file that was partly read).
        self._base = f.tell() if self.seekable else 0
        self.trailer: Trailer | None = None
        self._started = False
        self.header = self._read_header()
        self._data_start = self.position

    # -- front to back --------------------------------------------------------

    def _read(self, n: int, what: str, where: Where, hashed: bool = True) -> bytes:
        data = read_exact(self._f, n)
        if len(data) != n:
            raise FormatError(f"truncated in the {what}: expected {n} bytes, got {len(data)}", **where)
        if hashed:
            self._digest.update(data)
        self.position += n
        return data

    def _read_header(self) -> Header:
        where = Where(section="header")
        start = read_exact(self._f, PREAMBLE.size)
        if not start:
            raise FormatError("empty, not a tzero backup", **where)
        if not MAGIC.startswith(start[:len(MAGIC)]):
            raise FormatError("bad magic, not a tzero backup", **where)
        if len(start) < PREAMBLE.size:
            raise FormatError(f"truncated in the preamble: expected {PREAMBLE.size} bytes, "
                              f"got {len(start)}", **where)
        self._digest.update(start)
        self.position = len(start)
        _, version, length = PREAMBLE.unpack(start)
        if version not in SUPPORTED_VERSIONS:
            readable = ", ".join(map(str, SUPPORTED_VERSIONS))
            raise FormatError(f"unsupported format version {version} "
                              f"(this tzero reads {readable})", **where)
        if length > MAX_HEADER_LENGTH:
            raise FormatError(f"header length {length} exceeds the limit of "
                              f"{MAX_HEADER_LENGTH}", **where)
        body = self._read(length, "header", where)
        check = self._read(CHECK_SIZE, "header checksum", where)
        expected = xxhash.xxh3_128(start)
        expected.update(body)
        if expected.digest() != check:
            raise FormatError("header checksum mismatch", **where)
        header = Header.from_json(body)
        if header.format_version != version:
            raise FormatError(f"header says format version {header.format_version}, "
                              f"preamble says {version}", **where)
        self._payloads_in_digest = payloads_in_digest(version)
        return header

    def records(self) -> Iterator[Record]:
        """Yield every Record in stream order, then check index, trailer and digest.

        Raises FormatError at the first problem; nothing after it is yielded.
        Record.data is the dataset bytes, decoded from the stored payload (and checked against the
        record's length), so a record that does not decode is a FormatError like any other. A zero
        record (version 3) has no data and says how many zero bytes it stands for in Record.zeros.
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
            _, codec, flags, _, ds, length, offset, stored, _ = RECORD_HEAD.unpack(head)
            implied_index.update(INDEX_ENTRY.pack(ds, codec, flags, 0, offset, length, stored, position))
            count += 1
            data_bytes += length
            stored_bytes += stored
            next_offset = offset + length
            if flags & RECORD_ZERO:
                yield Record(ds, datasets[ds].name, offset, b"", length)
            else:
                yield Record(ds, datasets[ds].name, offset, _decoded(codec, payload, length, datasets[ds].name, offset))
        self._check_index(position, count, implied_index.digest())
        self._check_trailer(position, count, data_bytes, stored_bytes)

    def _read_record(self, last_ds: int, lowest: int) -> tuple[bytes, bytes] | None:
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
        head = tag + self._read(RECORD_HEAD.size - 4, "record head", between)
        _, codec, flags, reserved, ds, length, offset, stored, reserved2 = RECORD_HEAD.unpack(head)
        where = Where(dataset=datasets[ds].name, offset=offset) if ds < len(datasets) else between
        if stored > MAX_RECORD_LENGTH:
            raise FormatError(f"record length {stored} exceeds the limit of "
                              f"{MAX_RECORD_LENGTH}", **where)
        payload = self._read(stored, "record payload", where, hashed=self._payloads_in_digest)
        check = xxhash.xxh3_128(head)
        check.update(payload)
        if check.digest() != self._read(CHECK_SIZE, "record checksum", where):
            raise FormatError("record checksum mismatch", **where)
        problem = (codec_problem(codec, flags, reserved, reserved2, length, stored, self.header.format_version)
                   or place_problem(datasets, last_ds, lowest, ds, offset, length))
        if problem:
            raise FormatError(problem, **where)
        return head, payload

    def _between(self, ds: int, offset: int) -> Where:
        """Where the stream is between records: the end of the last good one."""
        if not self.header.datasets:
            return Where(section="records")
        return Where(dataset=self.header.datasets[ds].name, offset=offset)

    def _check_index(self, index_position: int, count: int, implied: bytes) -> None:
        where = Where(section="index")
        rest = self._read(INDEX_HEAD.size - 4, "index head", where)
        _, reserved, listed = INDEX_HEAD.unpack(INDEX_TAG + rest)
        check = xxhash.xxh3_128(INDEX_TAG + rest)
        if reserved:
            raise FormatError("reserved field is not zero", **where)
        if listed != count:
            raise FormatError(f"index lists {listed} records, the stream holds {count}", **where)
        entries = xxhash.xxh3_128()
        remaining = count * INDEX_ENTRY.size
        while remaining:
            piece = self._read(min(remaining, READ_SLICE), "index entries", where)
            check.update(piece)
            entries.update(piece)
            remaining -= len(piece)
        if check.digest() != self._read(CHECK_SIZE, "index checksum", where):
            raise FormatError("index checksum mismatch", **where)
        if entries.digest() != implied:
            raise FormatError("index does not match the records", **where)

    def _check_trailer(self, index_position: int, count: int, data_bytes: int, stored_bytes: int) -> None:
        where = Where(section="trailer")
        fields = self._read(TRAILER_FIELDS.size, "trailer", where)
        if xxhash.xxh3_128(fields).digest() != self._read(CHECK_SIZE, "trailer checksum", where):
            raise FormatError("trailer checksum mismatch", **where)
        tag, reserved, *values = TRAILER_FIELDS.unpack(fields)
        expected = [index_position, count, data_bytes, stored_bytes]
        if tag != TRAILER_TAG or reserved or values != expected:
            raise FormatError(f"trailer says (index position, records, data bytes, stored bytes) "
                              f"= {tuple(values)}, the stream has {tuple(expected)}", **where)
        computed = self._digest.digest()
        digest = self._read(CHECK_SIZE, "stream digest", where, hashed=False)
        if digest != computed:
            raise FormatError("stream digest mismatch", **where)
        if self._read(len(END_MAGIC), "end magic", where, hashed=False) != END_MAGIC:
            raise FormatError("bad end magic", **where)
        if read_exact(self._f, 1):
            raise FormatError("unexpected bytes after the end magic", **where)
        self.trailer = Trailer(index_position, count, data_bytes, stored_bytes,
                               digest.hex(), self.position)

    # -- from the end (seekable files) ------------------------------------------

    def read_trailer(self) -> Trailer:
        """The trailer, read from the end of a seekable F and checked on its own.

        The stream digest is returned but not verified: that takes records().
        """
        with kept_position(self._f):
            end = self._f.seek(0, 2) - self._base
            smallest = self._data_start + INDEX_HEAD.size + CHECK_SIZE + TRAILER_SIZE
            where = Where(section="trailer")
            if end < smallest:
                raise FormatError(f"stream is {end} bytes, too short to hold an index "
                                  "and a trailer", **where)
            self._f.seek(self._base + end - TRAILER_SIZE)
            raw = read_exact(self._f, TRAILER_SIZE)
        if raw[-len(END_MAGIC):] != END_MAGIC:
            raise FormatError("bad end magic (an incomplete backup?)", **where)
        fields, check = raw[:TRAILER_FIELDS.size], raw[TRAILER_FIELDS.size:TRAILER_FIELDS.size + CHECK_SIZE]
        if xxhash.xxh3_128(fields).digest() != check:
            raise FormatError("trailer checksum mismatch", **where)
        tag, reserved, index_position, count, data_bytes, stored_bytes = TRAILER_FIELDS.unpack(fields)
        index_end = index_position + INDEX_HEAD.size + count * INDEX_ENTRY.size + CHECK_SIZE
        if tag != TRAILER_TAG or reserved or index_position < self._data_start \
                or index_end != end - TRAILER_SIZE:
            raise FormatError("trailer does not describe an index that ends where it starts", **where)
        digest = raw[TRAILER_FIELDS.size + CHECK_SIZE:-len(END_MAGIC)]
        return Trailer(index_position, count, data_bytes, stored_bytes, digest.hex(), end)

    def read_index(self) -> "Index":
        """The index of a seekable F, checked against the trailer and the ordering rules."""
        trailer = self.read_trailer()
        where = Where(section="index")
        size = INDEX_HEAD.size + trailer.record_count * INDEX_ENTRY.size + CHECK_SIZE
        with kept_position(self._f):
            self._f.seek(self._base + trailer.index_position)
            raw = read_exact(self._f, size)
        if len(raw) != size:
            raise FormatError(f"truncated: expected {size} bytes, got {len(raw)}", **where)
        if xxhash.xxh3_128(raw[:-CHECK_SIZE]).digest() != raw[-CHECK_SIZE:]:
            raise FormatError("index checksum mismatch", **where)
        tag, reserved, count = INDEX_HEAD.unpack_from(raw)
        if tag != INDEX_TAG or reserved or count != trailer.record_count:
            raise FormatError("index head does not match the trailer", **where)
        index = Index(self.header, raw[INDEX_HEAD.size:-CHECK_SIZE])
        index.check(self._data_start, trailer)
        return index

    def read_data(self, entry: IndexEntry) -> bytes:
        """The dataset bytes of the record ENTRY names: read_record(), decoded (zeros for a zero record)."""
        name = self.header.datasets[entry.dataset_index].name
        if entry.flags & RECORD_ZERO:
            self.read_record(entry)
            return bytes(entry.length)
        return _decoded(entry.codec, self.read_record(entry), entry.length, name, entry.offset)

    def read_record(self, entry: IndexEntry) -> bytes:
        """The stored payload of the record ENTRY names, checked against its checksum."""
        name = self.header.datasets[entry.dataset_index].name
        where = Where(dataset=name, offset=entry.offset)
        size = RECORD_HEAD.size + entry.stored_length + CHECK_SIZE
        with kept_position(self._f):
            self._f.seek(self._base + entry.position)
            raw = read_exact(self._f, size)
        if len(raw) != size:
            raise FormatError(f"truncated in the record: expected {size} bytes, got {len(raw)}", **where)
        expected_head = RECORD_HEAD.pack(RECORD_TAG, entry.codec, entry.flags, 0, entry.dataset_index,
                                     entry.length, entry.offset, entry.stored_length, 0)
        if raw[:RECORD_HEAD.size] != expected_head:
            raise FormatError("record head does not match the index", **where)
        if xxhash.xxh3_128(raw[:-CHECK_SIZE]).digest() != raw[-CHECK_SIZE:]:
            raise FormatError("record checksum mismatch", **where)
        return raw[RECORD_HEAD.size:-CHECK_SIZE]


def _decoded(codec: int, payload: bytes, length: int, dataset: str, offset: int) -> bytes:
    try:
        return decode(codec, payload, length)
    except CodecError as e:
        raise FormatError(str(e), dataset=dataset, offset=offset) from None
