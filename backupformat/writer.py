"""Writing a stream front to back, never seeking, so it can go down a pipe."""

from collections.abc import Callable
from typing import TypedDict, TypeVarTuple

import xxhash

from backupformat.codec import CODEC_RAW, DEFAULT_ZSTD_LEVEL, Buffer, Encoder
from backupformat.fileobj import OutputFile, write_all
from backupformat.spec import (
    END_MAGIC,
    FORMAT_VERSION,
    INCREMENTAL_VERSION,
    INDEX_ENTRY,
    INDEX_HEAD,
    INDEX_TAG,
    MAGIC,
    MAX_HEADER_LENGTH,
    MAX_RECORD_LENGTH,
    PREAMBLE,
    RECORD_HEAD,
    RECORD_TAG,
    RECORD_ZERO,
    SUPPORTED_VERSIONS,
    TRAILER_FIELDS,
    TRAILER_TAG,
    Header,
    is_int,
    payloads_in_digest,
)

Ts = TypeVarTuple("Ts")


class StreamSummary(TypedDict):
    """What finish() returns: the stream's size, its records and bytes, its digest (hex)."""

    bytes: int
    records: int
    data_bytes: int
    stored_bytes: int
    digest: str


class StreamWriter:
    """Writes one stream front to back to OUT, which need not seek (a pipe will do).

    The preamble and header are written by the constructor. Records must come in
    stream order (see write()); finish() writes the index and the trailer. A
    misuse is a programming error and raises ValueError without writing. If OUT
    raises, the stream is left incomplete and the writer refuses further use:
    the caller aborts the backup.

    Memory: the index waits in memory until finish(), 32 bytes per record.
    """

    def __init__(self, out: OutputFile, header: Header, codec: int = CODEC_RAW,
                 level: int = DEFAULT_ZSTD_LEVEL) -> None:
        if header.format_version not in SUPPORTED_VERSIONS:
            raise ValueError(f"this writer writes format versions {SUPPORTED_VERSIONS} (full streams: "
                             f"{FORMAT_VERSION}, incremental: {INCREMENTAL_VERSION})")
        problem = header.problem()
        if problem:
            raise ValueError(problem)
        self._out = out
        self._encoder = Encoder(codec, level)  # records are stored with this codec when it pays
        self._datasets = list(header.datasets)
        self._incremental = header.format_version >= INCREMENTAL_VERSION
        self._digest = xxhash.xxh3_128()  # every byte before the digest itself, payloads as the version says
        self._payloads_in_digest = payloads_in_digest(header.format_version)
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
        preamble = PREAMBLE.pack(MAGIC, header.format_version, len(body))
        check = xxhash.xxh3_128(preamble)
        check.update(body)
        self._guarded(self._emit, preamble, body, check.digest())

    def write(self, dataset_index: int, offset: int, data: Buffer) -> None:
        """Append one record: DATA (bytes-like, 1 to MAX_RECORD_LENGTH bytes) at OFFSET.

        Order: dataset_index never decreases; within a dataset, a record starts
        at or after the end of the previous one; offset + len(data) is within
        the dataset. DATA is not copied. It is stored with the writer's codec
        when that makes it smaller, else raw.
        """
        self._check_open()
        view = memoryview(data)
        if view.format != "B" or view.ndim != 1:
            view = view.cast("B")
        length = view.nbytes
        self._check_place(dataset_index, offset, length)
        codec, payload = self._encoder.encode(view)
        stored = len(payload)
        head = RECORD_HEAD.pack(RECORD_TAG, codec, 0, 0, dataset_index, length, offset, stored, 0)
        check = xxhash.xxh3_128(head)
        check.update(payload)
        position = self.bytes_written
        self._guarded(self._emit_record, head, payload, check.digest())
        self._index += INDEX_ENTRY.pack(dataset_index, codec, 0, 0, offset, length, stored, position)
        self._records += 1
        self._data_bytes += length
        self._stored_bytes += stored
        self._dataset = dataset_index
        self._next_offset = offset + length

    def write_zero(self, dataset_index: int, offset: int, length: int) -> None:
        """Append a zero record (an incremental stream only): LENGTH bytes at OFFSET changed
        since the base and are now zero. The same order rules as write(); no payload."""
        self._check_open()
        if not self._incremental:
            raise ValueError("zero records belong to incremental streams: a full stream leaves zeros out")
        self._check_place(dataset_index, offset, length)
        head = RECORD_HEAD.pack(RECORD_TAG, CODEC_RAW, RECORD_ZERO, 0, dataset_index, length, offset, 0, 0)
        position = self.bytes_written
        self._guarded(self._emit, head, xxhash.xxh3_128(head).digest())
        self._index += INDEX_ENTRY.pack(dataset_index, CODEC_RAW, RECORD_ZERO, 0, offset, length, 0, position)
        self._records += 1
        self._data_bytes += length
        self._dataset = dataset_index
        self._next_offset = offset + length

    def finish(self) -> StreamSummary:
        """Write the index and trailer, flush OUT; return the stream's summary.

        Returns dict(bytes, records, data_bytes, stored_bytes, digest (hex)).
        """
        self._check_open()
        index_position = self.bytes_written
        index_head = INDEX_HEAD.pack(INDEX_TAG, 0, self._records)
        index_check = xxhash.xxh3_128(index_head)
        index_check.update(self._index)
        fields = TRAILER_FIELDS.pack(TRAILER_TAG, 0, index_position, self._records,
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

    def _emit(self, *bufs: Buffer) -> None:
        for buf in bufs:
            self._put(buf, hashed=True)

    def _emit_record(self, head: bytes, payload: Buffer, check: bytes) -> None:
        self._put(head, hashed=True)
        self._put(payload, hashed=self._payloads_in_digest)
        self._put(check, hashed=True)

    def _put(self, buf: Buffer, hashed: bool) -> None:
        if hashed:
            self._digest.update(buf)
        write_all(self._out, buf)
        self.bytes_written += memoryview(buf).nbytes

    def _guarded(self, fn: Callable[[*Ts], object], *args: *Ts) -> None:
        try:
            fn(*args)
        except BaseException:
            self._state = "broken"
            raise

    def _check_open(self) -> None:
        if self._state != "open":
            raise ValueError(f"the stream writer is {self._state}")

    def _check_place(self, dataset_index: int, offset: int, length: int) -> None:
        if not is_int(dataset_index) or not 0 <= dataset_index < len(self._datasets):
            raise ValueError(f"dataset index {dataset_index!r} is not in the header")
        if dataset_index < self._dataset:
            raise ValueError(f"dataset {dataset_index} after dataset {self._dataset}: "
                             "datasets must come in header order")
        lowest = self._next_offset if dataset_index == self._dataset else 0
        if not is_int(offset) or offset < lowest:
            raise ValueError(f"record at offset {offset!r} of dataset {dataset_index} "
                             f"overlaps or precedes the previous one (next free offset {lowest})")
        if not 0 < length <= MAX_RECORD_LENGTH:
            raise ValueError(f"record length {length} is not within 1..{MAX_RECORD_LENGTH}")
        size = self._datasets[dataset_index].size
        if offset + length > size:
            raise ValueError(f"record {offset}+{length} goes beyond dataset "
                             f"{dataset_index} of size {size}")
