"""Coalescing pieces into stream records.

Adjacent non-zero pieces of one dataset become one record of up to LIMIT bytes,
so a stripe of small chunks does not cost a record head, a checksum and an
index entry per chunk. A run that lies in one read buffer is written straight
from it (no copy); a record made of several buffers is gathered into its own
bytearray. A borrowed run must be given up before its read buffer goes back to
the pool: `release(source)` copies it first.
"""


class RecordAssembler:
    def __init__(self, writer, limit: int):
        self.writer = writer  # stream.StreamWriter
        self.limit = limit
        self._ds = self._start = self._length = 0
        self._data = None  # the record so far: a borrowed memoryview, bytes, or an owned bytearray
        self._source = None  # the read whose buffer _data borrows, or None
        self._at = 0  # where in that buffer the borrowed run starts

    def add(self, dataset: int, logical: int, data, source=None, at: int = 0) -> None:
        """Append DATA (LOGICAL bytes of DATASET). With SOURCE, DATA is SOURCE.data[at:at+len(DATA)]
        and is borrowed until release(SOURCE) or the next flush."""
        n = len(data)
        if self._length and (dataset != self._ds or self._start + self._length != logical
                             or self._length + n > self.limit):
            self.flush()
        if not self._length:
            self._ds, self._start, self._length = dataset, logical, n
            self._data, self._source, self._at = data, source, at
        elif source is not None and source is self._source and at == self._at + self._length:
            self._length += n
            self._data = memoryview(source.data)[self._at:self._at + self._length]
        else:
            self._own()
            self._data += data
            self._length += n
        if self._length >= self.limit:
            self.flush()  # now, while a borrowed run can still be written without a copy

    def release(self, source) -> None:
        """SOURCE's buffer is about to be reused: stop borrowing from it."""
        if self._length and self._source is source:
            self._own()

    def flush(self) -> None:
        """Write the record gathered so far, if any."""
        if self._length:
            self.writer.write(self._ds, self._start, self._data)
            self._length = 0
            self._data = self._source = None

    def _own(self) -> None:
        if not isinstance(self._data, bytearray):
            self._data = bytearray(self._data)
            self._source = None
