"""One dataset of a backup file, read at any offset through the stream's index.

This is what `tzero serve-backup` serves (nbdplugin/backup_plugin.py delegates
here): a read finds the records covering it by binary search, reads them,
checks them against their checksums and decodes them; bytes no record covers
are zeros, and `extents` reports them as holes. The last few decoded records
are kept, because readers (qemu-img, nbdcopy, a file system) read a record's
bytes in several requests.

An incremental backup is read over its chain (Chain): a view of the newest stream
lies over a view of its base, and so on down to the full stream; bytes the newest
has no record for are read from the view below it, zero records read as zeros.

Imports the stream package only: it runs inside nbdkit's embedded Python too.
Not thread-safe: the caller serialises requests (one file position, one cache).
"""

import bisect
from collections import OrderedDict
from collections.abc import Iterator
from typing import Protocol

from backupformat import FormatError, IndexEntry, StreamReader
from backupformat.chain import check_chain
from backupformat.fileobj import InputFile
from backupformat.spec import RECORD_ZERO

CACHED_RECORDS = 8


class SourceFile(InputFile, Protocol):
    """A seekable file a backup is read from, which the BackupFile then closes."""

    def close(self) -> None: ...


class BackupFile:
    """An open backup: its header, its index (checked against the trailer), its datasets by name.

    SOURCE is a path, or a seekable file already open (an object in a store), which the
    BackupFile then owns and closes, even when the constructor fails."""

    def __init__(self, source: "str | SourceFile") -> None:
        self._f: SourceFile = open(source, "rb") if isinstance(source, str) else source
        try:
            self.reader = StreamReader(self._f)
            self.index = self.reader.read_index()
        except BaseException:
            self._f.close()
            raise
        self.names = [d.name for d in self.reader.header.datasets]
        self._cache: OrderedDict[int, bytes] = OrderedDict()  # record position -> decoded bytes

    def view(self, name: str, below: "DatasetView | None" = None) -> "DatasetView":
        return DatasetView(self, self.names.index(name), below)

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


class Chain:
    """Backups SOURCES (paths or open files, as BackupFile takes them), newest first, checked
    as a chain (chain.check_chain, with the digests of their trailers): what serve-backup
    serves. One source is a chain of one full backup."""

    def __init__(self, sources: "list[str | SourceFile]") -> None:
        self.files: list[BackupFile] = []
        try:
            for source in sources:
                self.files.append(BackupFile(source))
            check_chain([f.reader.header for f in self.files], [f.reader.read_trailer().digest for f in self.files])
        except BaseException:
            self.close()
            raise
        self.names = self.files[0].names

    def view(self, name: str) -> "DatasetView":
        view = None
        for f in reversed(self.files):
            view = f.view(name, view)
        assert view is not None, "a chain holds at least one backup"
        return view

    def close(self) -> None:
        for f in self.files:
            f.close()


class DatasetView:
    def __init__(self, backup: BackupFile, dataset: int, below: "DatasetView | None" = None) -> None:
        self.backup = backup
        self.dataset = dataset
        self.name = backup.names[dataset]
        self.size = backup.reader.header.datasets[dataset].size
        self.below = below  # the base's view, for the bytes no record of this backup holds

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
                self._fill_gap(view[pos - offset:e.offset - offset], pos)
                pos = e.offset
            stop = min(end, e.offset + e.length)
            part = view[pos - offset:stop - offset]
            if e.flags & RECORD_ZERO:
                part[:] = bytes(len(part))
            else:
                part[:] = memoryview(self.backup.data(e))[pos - e.offset:stop - e.offset]
            pos = stop
        if pos < end:
            self._fill_gap(view[pos - offset:], pos)

    def _fill_gap(self, part: memoryview, offset: int) -> None:
        """Bytes no record holds: the base's, or zeros in a full backup."""
        if self.below is not None:
            self.below.read_into(part, offset)
        else:
            part[:] = bytes(len(part))

    def extents(self, offset: int, length: int, limit: int | None = None) -> list[tuple[int, int, bool]]:
        """(offset, length, is_hole) runs from OFFSET, back to back: all of [offset, offset+length)
        of the dataset, or the first LIMIT runs (adjacent records make one run; zero records and,
        in a full backup, the bytes no record holds are holes; the rest of a gap is the base's)."""
        end = min(offset + length, self.size)
        cap = None if limit is None else limit + 1  # one run more than asked: every run returned is whole
        runs: list[tuple[int, int, bool]] = []
        pos = offset
        for e in self._entries_from(offset):
            if pos >= end or e.offset >= end or (cap is not None and len(runs) >= cap):
                break
            if e.offset > pos:
                pos = self._gap_extents(runs, pos, e.offset, cap)
                if pos < e.offset:
                    return runs[:limit]  # the base said no more than the cap
            stop = min(end, e.offset + e.length)
            _add(runs, pos, stop - pos, bool(e.flags & RECORD_ZERO))
            pos = stop
        if pos < end and not (cap is not None and len(runs) >= cap):
            self._gap_extents(runs, pos, end, cap)
        return runs if limit is None else runs[:limit]

    def _gap_extents(self, runs: list[tuple[int, int, bool]], start: int, stop: int, cap: int | None) -> int:
        """Add the runs of a gap [START, STOP) (a hole, or the base's runs, at most CAP of them);
        returns how far they reach."""
        if self.below is None:
            _add(runs, start, stop - start, True)
            return stop
        below = self.below.extents(start, stop - start, cap)
        for run in below:
            _add(runs, *run)
        return start + sum(n for _, n, _ in below)


def _add(runs: list[tuple[int, int, bool]], offset: int, length: int, hole: bool) -> None:
    """Append a run, joined to the last one when adjacent and of the same kind."""
    if runs and runs[-1][2] == hole and runs[-1][0] + runs[-1][1] == offset:
        runs[-1] = (runs[-1][0], runs[-1][1] + length, hole)
    else:
        runs.append((offset, length, hole))


__all__ = ["BackupFile", "Chain", "DatasetView", "FormatError"]
