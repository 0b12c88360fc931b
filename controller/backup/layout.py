"""The controller's half of the concordance: where every byte of a dataset lives.

A dataset is a logical address space [0, size) laid over one or more exports.
Two layouts cover every dataset kind tzero knows:

    Linear   extents back to back: a whole export, a byte range, a partition,
             or a concatenation (dm-linear, LVM linear) of whole exports
    Striped  chunk c of the volume lives on leg c % n at offset (c // n) * CHUNK,
             as dm-striped and md RAID0 lay out equal legs

Both map logical to physical (`runs`, ascending logical order) and physical to
logical (`locate`), and say which physical byte ranges they use (`extents`),
which is what the subsystems are told to track. The copier works in *pieces*:
runs cut at every boundary of the subsystems' chunk grid, so one piece never
spans two concordance chunks and a chunk's pieces are found again by `locate`
exactly as `pieces` produced them.

Everything here is pure arithmetic on numbers fixed when the backup is planned.
"""

from collections.abc import Iterator
from typing import NamedTuple


class Piece(NamedTuple):
    """LENGTH bytes of dataset DATASET at LOGICAL, stored on EXPORT at PHYSICAL."""

    dataset: int
    logical: int
    export: str
    physical: int
    length: int


class Linear:
    """Extents (export, offset, length) placed back to back in logical order."""

    def __init__(self, extents: list[tuple[str, int, int]]):
        self._extents = [x for x in extents if x[2] > 0]  # set at planning, never changed
        self.size = sum(n for _, _, n in extents)

    @property
    def extents(self) -> list[tuple[str, int, int]]:
        return list(self._extents)

    def runs(self) -> Iterator[tuple[int, str, int, int]]:
        """(logical, export, physical, length) runs in ascending logical order."""
        logical = 0
        for export, offset, length in self._extents:
            yield logical, export, offset, length
            logical += length

    def locate(self, export: str, offset: int, length: int) -> list[tuple[int, int, int]]:
        """(logical, physical, length) of the bytes of [offset, offset+length) on EXPORT this layout uses."""
        found, logical = [], 0
        for e, start, n in self._extents:
            lo, hi = max(offset, start), min(offset + length, start + n)
            if e == export and lo < hi:
                found.append((logical + lo - start, lo, hi - lo))
            logical += n
        return found


class Striped:
    """Legs of equal usable size (the smallest leg, cut to whole CHUNKs), striped by CHUNK."""

    def __init__(self, chunk: int, legs: list[str], leg_sizes: list[int]):
        assert chunk > 0 and len(legs) >= 2 and len(set(legs)) == len(legs), "checked when the spec is parsed"
        self.chunk = chunk  # set at planning, never changed
        self.legs = list(legs)
        self.leg_size = min(leg_sizes) // chunk * chunk
        self.size = self.leg_size * len(legs)

    @property
    def extents(self) -> list[tuple[str, int, int]]:
        return [(leg, 0, self.leg_size) for leg in self.legs]

    def runs(self) -> Iterator[tuple[int, str, int, int]]:
        n, chunk = len(self.legs), self.chunk
        for c in range(self.size // chunk):
            yield c * chunk, self.legs[c % n], (c // n) * chunk, chunk

    def locate(self, export: str, offset: int, length: int) -> list[tuple[int, int, int]]:
        if export not in self.legs:
            return []
        leg, n, chunk = self.legs.index(export), len(self.legs), self.chunk
        found = []
        pos, end = offset, min(offset + length, self.leg_size)
        while pos < end:
            k = pos // chunk  # the leg's k-th stripe chunk is the volume's chunk k*n + leg
            stop = min(end, (k + 1) * chunk)
            found.append(((k * n + leg) * chunk + pos - k * chunk, pos, stop - pos))
            pos = stop
        return found


Layout = Linear | Striped


class Dataset(NamedTuple):
    """One dataset of the backup: its stream name, the spec it came from, its layout."""

    name: str
    spec: str
    layout: Layout

    @property
    def size(self) -> int:
        return self.layout.size

    @property
    def exports(self) -> set[str]:
        return {e for e, _, _ in self.layout.extents}


def pieces(datasets: list[Dataset], grid: int, export: str | None = None) -> Iterator[Piece]:
    """Every piece of DATASETS in stream order (datasets in order, each in ascending
    logical order), runs cut at multiples of GRID on the physical side; only those on
    EXPORT if given. Their (dataset, logical) keys ascend: that is the stream order."""
    for i, ds in enumerate(datasets):
        if export is not None and export not in ds.exports:
            continue
        for logical, e, physical, length in ds.layout.runs():
            if export is not None and e != export:
                continue
            end = physical + length
            while physical < end:
                n = min(end, (physical // grid + 1) * grid) - physical
                yield Piece(i, logical, e, physical, n)
                logical += n
                physical += n


def pieces_at(datasets: list[Dataset], export: str, offset: int, length: int) -> list[Piece]:
    """The pieces lying in [offset, offset+length) of EXPORT, which must be one grid chunk."""
    found = []
    for i, ds in enumerate(datasets):
        if export in ds.exports:
            found += [Piece(i, lg, export, ph, n) for lg, ph, n in ds.layout.locate(export, offset, length)]
    return found


def overlaps(datasets: list[Dataset]) -> str | None:
    """Why two datasets share a physical byte, or None."""
    spans = sorted((e, off, off + n, i) for i, ds in enumerate(datasets) for e, off, n in ds.layout.extents)
    for (e1, _, end1, i1), (e2, start2, _, i2) in zip(spans, spans[1:], strict=False):
        if e1 == e2 and start2 < end1:
            first, second = datasets[min(i1, i2)].name, datasets[max(i1, i2)].name
            if first == second:
                return f"dataset {first!r} uses bytes of export {e1!r} twice"
            return f"datasets {first!r} and {second!r} overlap on export {e1!r} at byte {start2}"
    return None


def describe(ds: Dataset) -> dict[str, object]:
    """What a stream's header extra says of a dataset: its spec and where its bytes came from
    (docs/format.md): what an incremental backup compares with its base's."""
    layout = ds.layout
    where: dict[str, object]
    if isinstance(layout, Striped):
        where = {"layout": "stripe", "chunk": layout.chunk, "legs": layout.legs, "leg_size": layout.leg_size}
    else:
        where = {"layout": "linear", "extents": [list(x) for x in layout.extents]}
    return {"name": ds.name, "spec": ds.spec, **where}
