"""Chunks fetched ahead of their place in the stream, waiting for it.

Memory holds up to `memory_limit` bytes; beyond that entries go to an unlinked
temporary spill file, so nothing is left behind whatever happens. Spill space
is not reused: what goes there is bounded by what the side stores pushed out
of order, which is itself bounded by their size.

An all-zero chunk is kept as None and costs nothing. Single-threaded: only
the copier's loop touches it.
"""

import os

from common.fileio import Buffer, read_fully, unlinked_scratch_file, write_all
from controller.errors import UsageError, os_error

Key = tuple[int, int]  # a piece's place in the stream: scheduler.key


def check_spill_dir(spill_dir: str | None, option: str = "--spill-dir") -> None:
    """UsageError unless a spill file can be made in SPILL_DIR (None: the temp directory): found
    out before anything is frozen, not when the first chunk spills, seconds into the copy."""
    try:
        os.close(unlinked_scratch_file(spill_dir, "tzero-reorder-"))
    except OSError as e:
        where = f"{option} {spill_dir}" if spill_dir else "the temp directory (TMPDIR)"
        raise UsageError(f"{where}: cannot make a spill file there: {e.strerror or e}") from None


class ReorderBuffer:
    def __init__(self, memory_limit: int, spill_dir: str | None = None):
        # Set at start, never changed.
        self.memory_limit = memory_limit
        self.spill_dir = spill_dir
        # Copy loop only.
        self._memory: dict[Key, bytes] = {}
        self._spilled: dict[Key, tuple[int, int]] = {}  # key -> (file offset, length)
        self._zero: set[Key] = set()
        self._spill_fd: int | None = None
        self._spill_end = 0
        self.memory_bytes = 0
        # Statistics.
        self.peak_memory_bytes = 0
        self.spilled_bytes = 0  # total ever written to the spill file

    def __contains__(self, key: Key) -> bool:
        return key in self._memory or key in self._spilled or key in self._zero

    def __len__(self) -> int:
        return len(self._memory) + len(self._spilled) + len(self._zero)

    def put(self, key: Key, data: Buffer | None) -> None:
        """Keep DATA (bytes-like, or None for all zero) for KEY until take(KEY)."""
        assert key not in self, "a chunk is fetched ahead once"
        if data is None:
            self._zero.add(key)
        elif self.memory_bytes + len(data) <= self.memory_limit:
            self._memory[key] = bytes(data)
            self.memory_bytes += len(data)
            self.peak_memory_bytes = max(self.peak_memory_bytes, self.memory_bytes)
        else:
            self._spill(key, data)

    def _spill(self, key: Key, data: Buffer) -> None:
        where = f"the reorder spill file in {self.spill_dir or 'the temp directory'}"
        view = memoryview(data)
        try:
            if self._spill_fd is None:
                self._spill_fd = unlinked_scratch_file(self.spill_dir, "tzero-reorder-")
            write_all(self._spill_fd, view, self._spill_end)
        except OSError as e:
            raise os_error(e, f"writing {where}") from None
        self._spilled[key] = (self._spill_end, len(view))
        self._spill_end += len(view)
        self.spilled_bytes += len(view)

    def take(self, key: Key) -> bytes | bytearray | None:
        """Remove and return KEY's data (None when all zero). KeyError if absent."""
        if key in self._zero:
            self._zero.remove(key)
            return None
        data = self._memory.pop(key, None)
        if data is not None:
            self.memory_bytes -= len(data)
            return data
        offset, length = self._spilled.pop(key)
        assert self._spill_fd is not None, "a spilled chunk is in the spill file"
        spilled = bytearray(length)
        read_fully(self._spill_fd, spilled, offset, "the reorder spill file")
        return spilled

    def close(self) -> None:
        self._memory.clear()
        self._spilled.clear()
        self._zero.clear()
        if self._spill_fd is not None:
            os.close(self._spill_fd)
            self._spill_fd = None
