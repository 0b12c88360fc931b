"""The index of a stream: random access to its records by (dataset, offset)."""

import bisect

from backupformat.spec import (
    CHECK_SIZE,
    INDEX_ENTRY,
    RECORD_HEAD,
    FormatError,
    Header,
    IndexEntry,
    Trailer,
    Where,
    codec_problem,
    place_problem,
)


class Index:
    """The records of a stream by (dataset, offset), packed at 32 bytes each.

    A sequence of IndexEntry; find() is the lookup random access needs.
    """

    def __init__(self, header: Header, packed: bytes) -> None:
        self._header = header
        self._packed = packed

    def __len__(self) -> int:
        return len(self._packed) // INDEX_ENTRY.size

    def __getitem__(self, i: int) -> IndexEntry:
        if not 0 <= i < len(self):
            raise IndexError(i)
        ds, codec, flags, _, offset, length, stored, position = INDEX_ENTRY.unpack_from(
            self._packed, i * INDEX_ENTRY.size)
        return IndexEntry(ds, codec, offset, length, stored, position, flags)

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
            _, _, flags, reserved, _, _, _, _ = INDEX_ENTRY.unpack_from(self._packed, n * INDEX_ENTRY.size)
            e = self[n]
            if e.dataset_index < len(datasets):
                where = Where(dataset=datasets[e.dataset_index].name, offset=e.offset)
            else:
                where = Where(section="index")
            problem = (codec_problem(e.codec, flags, reserved, 0, e.length, e.stored_length,
                                     self._header.format_version)
                       or place_problem(datasets, ds, next_offset if n else 0,
                                         e.dataset_index, e.offset, e.length))
            if not problem and e.position != position:
                problem = f"index puts the record at stream byte {e.position}, expected {position}"
            if problem:
                raise FormatError(f"index: {problem}", **where)
            position += RECORD_HEAD.size + e.stored_length + CHECK_SIZE
            ds, next_offset = e.dataset_index, e.offset + e.length
            data_bytes += e.length
            stored_bytes += e.stored_length
        if (position, data_bytes, stored_bytes) != (trailer.index_position, trailer.data_bytes,
                                                    trailer.stored_bytes):
            raise FormatError("index entries do not add up to the trailer", section="index")

