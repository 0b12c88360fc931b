"""Coalescing pieces into stream records.

Adjacent non-zero pieces of one dataset become one record of up to LIMIT bytes,
so a stripe of small chunks does not cost a record head, a checksum and an
index entry per chunk. A run that lies in one read buffer is written straight
from it (no copy); a record made of several buffers is gathered into its own
bytearray. A borrowed run must be given up before its read buffer goes back to
the pool: `release(source)` copies it first.

Zero pieces: left out of a full stream (a hole reads as zeros). An incremental stream
must say that a changed piece is now zero (a hole there means "as in the base"), so
adjacent zero pieces become one zero record, of up to MAX_RECORD_LENGTH bytes.
"""

from backupformat import MAX_RECORD_LENGTH, StreamWriter
from common.fileio import Buffer
from controller.backup.view_reader import Read


class RecordAssembler:
    def __init__(self, writer: StreamWriter, limit: int, zero_records: bool = False):
        # Set at start, never changed.
        self.writer = writer
        self.limit = limit
        self.zero_records = zero_records  # an incremental stream: zero pieces are zero records
        # The zero run being gathered (incremental only); copy loop only.
        self._zero_ds = self._zero_start = self._zero_length = 0
        # The record being gathered; copy loop only.
        self._ds = self._start = self._length = 0
        self._data: Buffer | None = None  # the record so far: a borrowed memoryview, bytes, or an owned bytearray
        self._source: Read | None = None  # the read whose buffer _data borrows, or None
        self._at = 0  # where in that buffer the borrowed run starts

    def add(self, dataset: int, logical: int, data: Buffer, source: Read | None = None, at: int = 0) -> None:
        """Append DATA (LOGICAL bytes of DATASET). With SOURCE, DATA is SOURCE.data[at:at+len(DATA)]
        and is borrowed until release(SOURCE) or the next flush."""
        n = len(data)
        if self._zero_length:
            self.flush()
        if self._length and (dataset != self._ds or self._start + self._length != logical
                             or self._length + n > self.limit):
            self.flush()
        if not self._length:
            self._ds, self._start, self._length = dataset, logical, n
            self._data, self._source, self._at = data, source, at
        elif source is not None and source is self._source and at == self._at + self._length:
            assert source.data is not None, "a run is borrowed only from a read that holds its buffer"
            self._length += n
            self._data = memoryview(source.data)[self._at:self._at + self._length]
        else:
            owned = self._own()
            owned += data
            self._length += n
        if self._length >= self.limit:
            self.flush()  # now, while a borrowed run can still be written without a copy

    def add_zero(self, dataset: int, logical: int, length: int) -> None:
        """LENGTH zero bytes of DATASET at LOGICAL: a gap in a full stream, part of a zero record
        in an incremental one."""
        if not self.zero_records:
            self.flush()
            return
        if self._zero_length and dataset == self._zero_ds and logical == self._zero_start + self._zero_length \
                and self._zero_length + length <= MAX_RECORD_LENGTH:
            self._zero_length += length
            return
        self.flush()
        self._zero_ds, self._zero_start, self._zero_length = dataset, logical, length

    def release(self, source: Read) -> None:
        """SOURCE's buffer is about to be reused: stop borrowing from it."""
        if self._length and self._source is source:
            self._own()

    def flush(self) -> None:
        """Write the record gathered so far, if any."""
        if self._zero_length:
            self.writer.write_zero(self._zero_ds, self._zero_start, self._zero_length)
            self._zero_length = 0
        if self._length:
            assert self._data is not None, "a record being gathered holds its bytes"
            self.writer.write(self._ds, self._start, self._data)
            self._length = 0
            self._data = self._source = None

    def _own(self) -> bytearray:
        """The record so far as a bytearray of our own (copied from what it borrowed, once)."""
        if not isinstance(self._data, bytearray):
            assert self._data is not None, "only a record being gathered is owned"
            self._data = bytearray(self._data)
            self._source = None
        return self._data
