"""How big the parts of a multipart upload are: S3's limits and the largest stream a plan can make.

S3 takes at most MAX_PARTS parts of one upload, each of MIN_PART to MAX_PART bytes but the
last, which may be smaller. The stream's size is not known before it is written, but it
has a bound (stream_bound), so the part size is settled before anything is frozen: the
default grows with the backup, and a --part-size too small for it is refused up front
rather than failing at part 10,001 hours later.
"""

from backupformat import MAX_HEADER_LENGTH, TRAILER_SIZE
from common.units import human_size
from controller.backup.layout import Dataset, Striped
from controller.errors import UsageError

MIN_PART = 5 << 20
MAX_PART = 5 << 30
MAX_PARTS = 10_000
DEFAULT_PART = 16 << 20  # 10,000 of them: 156.25 GiB
RECORD_OVERHEAD = 32 + 16 + 32  # record head, record check, index entry
FIXED_OVERHEAD = 16 + MAX_HEADER_LENGTH + 16 + 16 + 16 + TRAILER_SIZE  # preamble, header, checks, index head


def stream_bound(datasets: list[Dataset], chunk: int) -> int:
    """The most bytes a stream of DATASETS, copied in CHUNK-sized pieces, can take.

    Compression never makes a record larger and holes make none, so the data is at most
    the datasets' sizes; records are at most one per piece, and a piece ends at every
    chunk boundary of a subsystem, of a stripe, and at every extent's ends.
    """
    total = FIXED_OVERHEAD
    for ds in datasets:
        layout = ds.layout
        if isinstance(layout, Striped):
            records = ds.size // min(chunk, layout.chunk) + 2 * len(layout.legs) + 1
        else:
            records = ds.size // chunk + 2 * len(layout.extents) + 1
        total += ds.size + RECORD_OVERHEAD * records
    return total


def check_part_size(size: int) -> None:
    """UsageError for a --part-size S3 cannot take."""
    if size < MIN_PART:
        raise UsageError(f"--part-size {human_size(size)}: S3 takes parts of at least 5 MiB")
    if size > MAX_PART:
        raise UsageError(f"--part-size {human_size(size)}: S3 takes parts of at most 5 GiB")


def choose_part_size(requested: int | None, bound: int) -> int:
    """The part size for a stream of at most BOUND bytes: REQUESTED (checked), or DEFAULT_PART
    raised to the next MiB that lets MAX_PARTS parts hold BOUND."""
    need = -(-bound // MAX_PARTS)
    need = -(-need // (1 << 20)) << 20
    if requested is None:
        size = max(DEFAULT_PART, need)
        if size > MAX_PART:
            raise UsageError(f"this backup may reach {human_size(bound)}, more than 10,000 parts of 5 GiB "
                             "(the most one S3 object can take)")
        return size
    check_part_size(requested)
    if requested < need:
        raise UsageError(f"--part-size {human_size(requested)}: 10,000 parts hold "
                         f"{human_size(requested * MAX_PARTS)}, and this backup may reach {human_size(bound)}; "
                         f"use --part-size {need >> 20}M or more, or leave it out")
    return requested


def capacity(part_size: int) -> int:
    """The largest stream parts of PART_SIZE can hold."""
    return part_size * MAX_PARTS
