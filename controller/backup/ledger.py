"""What the backup still owes each concordance chunk, so a chunk is released only once
every byte the backup needs from it has been taken.

A chunk can hold bytes of several pieces (a stripe chunk smaller than the
concordance chunk, two datasets meeting inside one chunk, a partition table
beside partition data): releasing it at the first one would make the view
refuse the others. So each chunk counts the bytes still to take; `settle`
returns the chunks that reached zero, which are then safe to release.

Memory: 4 bytes per chunk between the lowest and the highest claimed byte of
each export. Single-threaded: only the copier's loop uses it.
"""

from array import array


class Ledger:
    def __init__(self, grid: int, claims: dict[str, list[tuple[int, int]]]):
        """CLAIMS: export -> (offset, length) ranges the backup will read, each once per claim."""
        self.grid = grid  # the concordance chunk size, set at planning
        self._base: dict[str, int] = {}
        self._owed: dict[str, array[int]] = {}
        for export, ranges in claims.items():
            if not ranges:
                continue
            first = min(off for off, _ in ranges) // grid
            last = max(off + n - 1 for off, n in ranges) // grid
            self._base[export] = first
            self._owed[export] = array("I", bytes(4 * (last - first + 1)))
            for off, n in ranges:
                self._walk(export, off, n, +1)

    @property
    def exports(self) -> set[str]:
        """The exports the backup takes bytes from."""
        return set(self._owed)

    def settle(self, export: str, offset: int, length: int) -> list[int]:
        """The bytes [offset, offset+length) of EXPORT were taken; returns the chunks now owed nothing."""
        return self._walk(export, offset, length, -1)

    def owed(self, export: str, chunk: int) -> int:
        base = self._base.get(export)
        if base is None or not 0 <= chunk - base < len(self._owed[export]):
            return 0
        return self._owed[export][chunk - base]

    def _walk(self, export: str, offset: int, length: int, sign: int) -> list[int]:
        owed, base, grid = self._owed[export], self._base[export], self.grid
        done = []
        pos, end = offset, offset + length
        while pos < end:
            c = pos // grid
            stop = min(end, (c + 1) * grid)
            i = c - base
            assert sign > 0 or owed[i] >= stop - pos, "a byte is settled once per claim"
            owed[i] += sign * (stop - pos)
            if sign < 0 and owed[i] == 0:
                done.append(c)
            pos = stop
        return done
