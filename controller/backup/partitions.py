"""Finding partition N in a GPT or an MBR, through any `read(offset, length)`.

The planner reads the table from the live export before freezing (to know what
to track); the same code reads it again from the time-zero view after thaw, and
the two answers must agree. `TableReader` remembers every byte range it read, so
the planner can track exactly those sectors and the re-check can read them.

Supported: GPT (sector size 512 or 4096, header and entry-array CRCs checked);
MBR primary partitions 1-4 and logical partitions 5+ through the EBR chain.
A protective MBR (type 0xEE) means GPT. Numbering follows Linux: GPT entry i is
partition i+1; MBR logical partitions are numbered from 5 in chain order.
"""

import struct
import zlib
from collections.abc import Callable

MBR_SIGNATURE = b"\x55\xaa"
GPT_SIGNATURE = b"EFI PART"
_EXTENDED = {0x05, 0x0F, 0x85}
_MAX_LOGICAL = 128  # an EBR chain longer than this is taken as a loop
_MAX_GPT_ENTRIES_BYTES = 1 << 20


class PartitionError(Exception):
    """the partition table cannot be read, or has no such partition"""


class TableReader:
    """Wraps READ(offset, length) -> bytes and records the ranges read."""

    def __init__(self, read: Callable[[int, int], bytes], size: int):
        self._read = read
        self.size = size
        self.ranges: list[tuple[int, int]] = []

    def read(self, offset: int, length: int) -> bytes:
        if offset < 0 or offset + length > self.size:
            raise PartitionError(f"the table points outside the export (byte {offset})")
        self.ranges.append((offset, length))
        data = self._read(offset, length)
        if len(data) != length:
            raise PartitionError(f"short read of the table at byte {offset}")
        return data


def find_partition(reader: TableReader, number: int) -> tuple[int, int]:
    """(start, length) in bytes of partition NUMBER; PartitionError if absent or unreadable."""
    mbr = reader.read(0, 512)
    if mbr[510:512] != MBR_SIGNATURE:
        raise PartitionError("no partition table (no MBR signature in sector 0)")
    entries = [struct.unpack_from("<B3xB3xII", mbr, 446 + 16 * i) for i in range(4)]
    if any(kind == 0xEE for _, kind, _, _ in entries):
        return _gpt_partition(reader, number)
    return _mbr_partition(reader, entries, number)


def _gpt_partition(reader: TableReader, number: int) -> tuple[int, int]:
    for sector in (512, 4096):
        if reader.size >= 2 * sector and reader.read(sector, 8) == GPT_SIGNATURE:
            break
    else:
        raise PartitionError("protective MBR but no GPT header")
    head = reader.read(sector, 92)
    size, crc = struct.unpack_from("<II", head, 12)
    if size != 92 or zlib.crc32(head[:16] + b"\0\0\0\0" + head[20:92]) != crc:
        raise PartitionError("GPT header checksum mismatch")
    entries_lba, count, entry_size, entries_crc = struct.unpack_from("<QIII", head, 72)
    if entry_size < 128 or count * entry_size > _MAX_GPT_ENTRIES_BYTES:
        raise PartitionError(f"GPT entry array of {count} x {entry_size} bytes is not plausible")
    array = reader.read(entries_lba * sector, count * entry_size)
    if zlib.crc32(array) != entries_crc:
        raise PartitionError("GPT partition entries checksum mismatch")
    if not 1 <= number <= count:
        raise PartitionError(f"no partition {number}: the GPT has {count} entries")
    entry = array[(number - 1) * entry_size:number * entry_size]
    first, last = struct.unpack_from("<QQ", entry, 32)
    if entry[:16] == bytes(16) or last < first:
        raise PartitionError(f"no partition {number} in the GPT")
    return first * sector, (last - first + 1) * sector


def _mbr_partition(reader: TableReader, entries: list[tuple[int, ...]], number: int) -> tuple[int, int]:
    if number <= 4:
        _, kind, start, sectors = entries[number - 1]
        if kind == 0 or sectors == 0:
            raise PartitionError(f"no partition {number} in the MBR")
        if kind in _EXTENDED:
            raise PartitionError(f"partition {number} is an extended partition, not a dataset")
        return start * 512, sectors * 512
    extended = [e for e in entries if e[1] in _EXTENDED and e[3]]
    if not extended:
        raise PartitionError(f"no partition {number}: the MBR has no extended partition")
    base = extended[0][2]
    ebr = base
    for logical in range(5, 5 + _MAX_LOGICAL):
        sector = reader.read(ebr * 512, 512)
        if sector[510:512] != MBR_SIGNATURE:
            raise PartitionError(f"broken logical partition chain at sector {ebr}")
        _, kind, start, sectors = struct.unpack_from("<B3xB3xII", sector, 446)
        _, next_kind, next_start, _ = struct.unpack_from("<B3xB3xII", sector, 462)
        if logical == number:
            if kind == 0 or sectors == 0:
                raise PartitionError(f"no partition {number} in the MBR")
            return (ebr + start) * 512, sectors * 512
        if next_kind == 0 or next_start == 0:
            break
        ebr = base + next_start
    raise PartitionError(f"no partition {number}: the MBR has fewer logical partitions")
