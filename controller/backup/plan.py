"""Planning a backup: dataset specs resolved against the subsystems' exports, before
anything is frozen.

The plan says, per dataset, its layout (layout.py); per subsystem, which exports
join the session and which byte ranges of them are tracked; and which bytes the
copier will take (the ledger's claims). Every user mistake (unknown export,
range beyond the export, overlapping datasets, missing partition) is a
UsageError here, before a session is opened.

Partitions: the table is read from the live export now, because what to track
must be known before the freeze. Its sectors are tracked too, and the copier
reads the table again from the time-zero view and refuses to go on if the
partition moved in between (`recheck_partitions`): the backup then holds
exactly the partition as it was at time zero, or nothing.

An incremental backup (`narrow`) takes only the pieces whose concordance chunk changed
since its base: claims, pieces and pieces_at leave the others out. A partition table is
still read whole (the `keeps` ranges stay tracked whether they changed or not), since the
check reads it through the time-zero view.
"""

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

import nbd

from common.concordance import runs
from common.units import exact_size
from controller.backup.dataspec import DatasetSpec
from controller.backup.group import Member, Tracks
from controller.backup.layout import Dataset, Layout, Linear, Piece, Striped, overlaps, pieces, pieces_at
from controller.backup.partitions import PartitionError, TableReader, find_partition
from controller.backup.view_reader import ViewReader
from controller.errors import SessionAborted, UsageError
from controller.nbd.connect import connect, redacted


@dataclass
class PartitionCheck:
    dataset: str
    export: str
    number: int
    start: int
    length: int
    table: list[tuple[int, int]] = field(default_factory=list)  # (offset, length) ranges the table occupies


@dataclass
class Plan:
    datasets: list[Dataset]  # in stream order
    owner: dict[str, Member]  # export name -> the member serving it
    checks: list[PartitionCheck]
    # Set by narrow, after time zero, for an incremental backup: export -> one byte per chunk of
    # GRID bytes, 1 where it changed since the base. None: a full backup, every piece.
    changed: dict[str, bytes | bytearray] | None = None
    grid: int = 0

    def narrow(self, changed: dict[str, bytes | bytearray], grid: int) -> None:
        self.changed, self.grid = changed, grid

    def wanted(self, p: Piece) -> bool:
        return self.changed is None or bool(self.changed[p.export][p.physical // self.grid])

    def pieces(self, grid: int, export: str | None = None) -> Iterator[Piece]:
        """layout.pieces of the datasets that the backup takes (all, or only changed ones)."""
        return (p for p in pieces(self.datasets, grid, export) if self.wanted(p))

    def pieces_at(self, export: str, offset: int, length: int) -> list[Piece]:
        return [p for p in pieces_at(self.datasets, export, offset, length) if self.wanted(p)]

    def claims(self) -> dict[str, list[tuple[int, int]]]:
        """export -> the byte ranges the copier will take: every dataset extent (or its changed
        chunks), every table."""
        claims: dict[str, list[tuple[int, int]]] = {}
        for ds in self.datasets:
            for e, off, n in ds.layout.extents:
                claims.setdefault(e, []).extend(self._changed_parts(e, off, n))
        for c in self.checks:
            claims.setdefault(c.export, []).extend(c.table)
        return claims

    def changed_bytes(self) -> int:
        """The dataset bytes an incremental holds: those of the changed chunks (tables left out)."""
        return sum(n for ds in self.datasets for e, off, length in ds.layout.extents
                   for _, n in self._changed_parts(e, off, length))

    def _changed_parts(self, export: str, offset: int, length: int) -> list[tuple[int, int]]:
        if self.changed is None:
            return [(offset, length)]
        bits, grid, end = self.changed[export], self.grid, offset + length
        return [(max(offset, first * grid), min(end, (first + count) * grid) - max(offset, first * grid))
                for first, count in runs(bits, offset // grid, (end - 1) // grid + 1)]

    def keeps(self) -> Tracks:
        """Control path -> {export: ranges} an incremental keeps tracked whether they changed or not:
        the partition tables, which are read again through the time-zero view."""
        out: Tracks = {}
        for c in self.checks:
            out.setdefault(self.owner[c.export].where, {}).setdefault(c.export, []).extend(
                [off, n] for off, n in c.table)
        return out

    def tracks(self) -> Tracks:
        """Control path -> {export: [[offset, length], ...]} (merged), for each member's open."""
        out: Tracks = {}
        for export, ranges in self.claims().items():
            out.setdefault(self.owner[export].where, {})[export] = _merged(ranges)
        return out


def _merged(ranges: list[tuple[int, int]]) -> list[list[int]]:
    out: list[list[int]] = []
    for off, n in sorted(ranges):
        if out and off <= out[-1][0] + out[-1][1]:
            out[-1][1] = max(out[-1][1], off + n - out[-1][0])
        else:
            out.append([off, n])
    return out


def make_plan(specs: list[DatasetSpec], members: list[Member]) -> Plan:
    """Resolve SPECS (none: every export whole, in subsystem order) against MEMBERS' exports."""
    owner = {e["name"]: m for m in members for e in m.exports}
    sizes = {e["name"]: e["size"] for m in members for e in m.exports}
    if not specs:
        whole = [Dataset(name, name, Linear([(name, 0, size)])) for name, size in sizes.items()]
        return Plan(whole, owner, [])
    names = [s.name for s in specs]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise UsageError(f"dataset name {twice[0]!r} is given twice")
    datasets: list[Dataset] = []
    checks: list[PartitionCheck] = []
    for spec in specs:
        unknown = [e for e in spec.exports if e not in sizes]
        if unknown:
            raise UsageError(f"dataset {spec.name!r}: no export named {unknown[0]!r} "
                             f"(the subsystems serve {', '.join(sorted(sizes))})")
        layout, check = _layout(spec, sizes, owner)
        datasets.append(Dataset(spec.name, spec.text, layout))
        if check:
            checks.append(check)
    problem = overlaps(datasets)
    if problem:
        raise UsageError(problem)
    return Plan(datasets, owner, checks)


def _layout(spec: DatasetSpec, sizes: dict[str, int], owner: dict[str, Member]) -> tuple[Layout, PartitionCheck | None]:
    export = spec.exports[0]
    if spec.kind == "export":
        return Linear([(export, 0, sizes[export])]), None
    if spec.kind == "range":
        if spec.start + spec.length > sizes[export]:
            raise UsageError(f"dataset {spec.name!r}: bytes {spec.start} to {spec.start + spec.length} "
                             f"are beyond export {export!r} ({exact_size(sizes[export])})")
        return Linear([(export, spec.start, spec.length)]), None
    if spec.kind == "concat":
        return Linear([(e, 0, sizes[e]) for e in spec.exports]), None
    if spec.kind == "stripe":
        layout = Striped(spec.chunk, list(spec.exports), [sizes[e] for e in spec.exports])
        if layout.size == 0:
            raise UsageError(f"dataset {spec.name!r}: a leg is smaller than the stripe chunk {spec.chunk}")
        return layout, None
    assert spec.kind == "partition", f"dataspec makes no kind {spec.kind!r}"
    start, length, table = _read_partition(spec, owner[export], sizes[export])
    return Linear([(export, start, length)]), PartitionCheck(spec.name, export, spec.partition, start, length, table)


def _read_partition(spec: DatasetSpec, member: Member, size: int) -> tuple[int, int, list[tuple[int, int]]]:
    export = spec.exports[0]
    try:
        h = connect(member.nbd, export, member.tls_dir)
    except nbd.Error as e:
        raise UsageError(f"dataset {spec.name!r}: cannot read export {export!r}: {e.string}") from None
    try:
        reader = TableReader(lambda off, n: h.pread(n, off), size)
        start, length = find_partition(reader, spec.partition)
    except PartitionError as e:
        raise UsageError(f"dataset {spec.name!r}: export {export!r}: {e}") from None
    except nbd.Error as e:
        raise UsageError(f"dataset {spec.name!r}: reading the table of {export!r}: {e.string}") from None
    finally:
        h.shutdown()
    if start + length > size:
        raise UsageError(f"dataset {spec.name!r}: partition {spec.partition} ends beyond export {export!r}")
    return start, length, reader.ranges


def recheck_partitions(checks: list[PartitionCheck], readers: Mapping[str, ViewReader]) -> None:
    """Read every partition table again from the time-zero views (READERS: export -> ViewReader);
    SessionAborted if a partition is not where the plan put it."""
    for c in checks:
        table = TableReader(_read_function(readers[c.export]), 1 << 63)
        found: tuple[int, int] | str
        try:
            found = find_partition(table, c.number)
        except (PartitionError, nbd.Error) as e:
            found = f"unreadable ({redacted(str(getattr(e, 'string', None) or e))})"
        if found != (c.start, c.length):
            raise SessionAborted(f"dataset {c.dataset!r}: the partition table of {c.export!r} changed before "
                                 f"time zero (p{c.number} was at {c.start}+{c.length}, is {found}); "
                                 "run the backup again")


def _read_function(reader: ViewReader) -> Callable[[int, int], bytes]:
    """READER's synchronous read as TableReader calls it: (offset, length)."""
    return lambda off, n: reader.pread(n, off)
