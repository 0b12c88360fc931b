"""One dataset of a backup file, read at any offset through the stream's index.

This is what `tzero serve-backup` serves (nbdplugin/backup_plugin.py delegates
here): a read finds the records covering it by binary search, reads them,
checks them against their checksums and decodes them; bytes no record covers
are zeros, and `extents` reports them as holes. The last few decoded records
are kept, because readers (qemu-img, nbdcopy, a file system) read a record's
bytes in several requests.

Imports the stream package only: it runs inside nbdkit's embedded Python too.
Not thread-safe: the caller serialises requests (one file position, one cache).
"""

import bisect
from collections import OrderedDict
from collections.abc import Iterator

from backupformat import FormatError, IndexEntry, StreamReader

CACHED_RECORDS = 8


class BackupFile:
    """An open backup: its header, its index (checked against the trailer), its datasets by name."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._f = open(path, "rb")
        try:
            self.reader = StreamReader(self._f)
            self.index = self.reader.read_index()
        except BaseException:
            self._f.close()
            raise
        self.names = [d.name for d in self.reader.header.datasets]
        self._cache: OrderedDict[int, bytes] = OrderedDict()  # record position -> decoded bytes

    def view(self, name: str) -> "DatasetView":
        return DatasetView(self, self.names.index(name))

    def data(self, entry: IndexEntry) -> bytes:
        """ENTRY's decoded bytes; FormatError if the record is damaged."""
        data = self._cache.get(entry.position)
        if data is None:
            data = self.reader.read_data(entry)
            self._cache[entry.position] = data
            if len(self._cache) > CACHED_RECORDS:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(entry.position)
        return data

    def close(self) -> None:
        self._f.close()


class DatasetView:
    def __init__(self, backup: BackupFile, dataset: int) -> None:
        self.backup = backup
        self.dataset = dataset
        self.name = backup.names[dataset]
        self.size = backup.reader.header.datasets[dataset].size

    def _entries_from(self, offset: int) -> Iterator[IndexEntry]:
        """Index entries of this dataset that end after OFFSET, in order."""
        index = self.backup.index
        i = bisect.bisect_right(index, (self.dataset, offset), key=lambda e: (e.dataset_index, e.offset))
        if i and index[i - 1].dataset_index == self.dataset and index[i - 1].offset + index[i - 1].length > offset:
            i -= 1
        while i < len(index) and index[i].dataset_index == self.dataset:
            yield index[i]
            i += 1

    def read_into(self, buf: bytearray | memoryview, offset: int) -> None:
        """Fill BUF with the dataset's bytes at OFFSET (within the dataset). FormatError if damaged."""
        view = memoryview(buf)
        end = offset + len(view)
        pos = offset
        for e in self._entries_from(offset):
            if pos >= end:
                break
            if e.offset >= end:
                break
            if e.offset > pos:  # a hole before this record
                view[pos - offset:e.offset - offset] = bytes(e.offset - pos)
                pos = e.offset
            stop = min(end, e.offset + e.length)
            view[pos - offset:stop - offset] = memoryview(self.backup.data(e))[pos - e.offset:stop - e.offset]
            pos = stop
        if pos < end:
            view[pos - offset:] = bytes(end - pos)

    def extents(self, offset: int, length: int, limit: int | None = None) -> list[tuple[int, int, bool]]:
        """(offset, length, is_hole) runs from OFFSET, back to back: all of [offset, offset+length)
        of the dataset, or the first LIMIT runs (adjacent records make one run)."""
        end = min(offset + length, self.size)
        runs: list[tuple[int, int, bool]] = []
        pos = offset

        def full() -> bool:
            return limit is not None and len(runs) >= limit

        for e in self._entries_from(offset):
            if pos >= end or e.offset >= end:
                break
            if e.offset > pos:
                if full():
                    return runs
                runs.append((pos, e.offset - pos, True))
                pos = e.offset
            stop = min(end, e.offset + e.length)
            if runs and not runs[-1][2] and runs[-1][0] + runs[-1][1] == pos:
                runs[-1] = (runs[-1][0], stop - runs[-1][0], False)
            elif full():
                return runs
            else:
                runs.append((pos, stop - pos, False))
            pos = stop
        if pos < end and not full():
            runs.append((pos, end - pos, True))
        return runs


__all__ = ["BackupFile", "DatasetView", "FormatError"]
