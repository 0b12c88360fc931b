"""The shared concordance's byte layout: what the plugin writes and a local controller reads.

The plugin keeps each export's chunk states in a memfd mapping; a controller on the same
host maps it read-only (the session's `open` reply names it) to read PENDING chunks
straight from the device. Both sides use these names, so the layout is written once.

    byte 0                 DEAD flag: 0 while the session saves chunks, 1 from the moment
                           it stops (abort, close): PENDING no longer means "in place"
    bytes 1 .. 7           reserved, zero
    bytes 8 .. 23          the session's locality token: 16 random bytes the plugin writes
                           here and sends in the `open` reply. A controller that maps the
                           file the reply names and finds the same bytes knows it maps this
                           very session's concordance, so it runs on the subsystem's host:
                           a path and inode numbers could name another file on another
                           host by accident, 128 random bits cannot.
    bytes 24 .. 31         writes admitted: the mutations the export's write gate admitted
                           while this session was open, an unsigned 64-bit count in the
                           host's byte order (a local controller only: x86-64, little
                           endian). `--rate auto` reads it to yield to busy writers
                           (controller/backup/rate.py); a torn or stale load costs only a
                           pacing decision, never a byte of the backup.
    byte HEADER + c        the state of chunk c: PENDING, SAVED or DONE
    SLOTS + 16 c           where chunk c's saved copy is, once SAVED (below); SLOTS is the
                           first multiple of 8 after the states

State table (a chunk only ever moves down it within one session):

    PENDING  in place on the device, not yet in the backup: a mutation must save it first
    SAVED    old content is in the side store; the device may already hold newer data
    DONE     in the backup (released), or never tracked: nothing is owed for it
"""

import struct
from collections.abc import Iterator

PENDING, SAVED, DONE = 0, 1, 2
STATE_NAMES = {PENDING: "pending", SAVED: "saved", DONE: "done"}
DEAD_OFFSET = 0
TOKEN_OFFSET, TOKEN_SIZE = 8, 16
WRITES_OFFSET = 24  # 8 bytes: writes admitted (above)
HEADER = 32


def mapping_size(chunks: int) -> int:
    """Bytes of the mapping that holds CHUNKS states and their slot entries."""
    return slots_offset(chunks) + SLOT_ENTRY.size * chunks


def chunk_count(size: int, chunk_size: int) -> int:
    """Chunks covering SIZE bytes; the last one may be short."""
    return -(-size // chunk_size)


def runs(bits: bytes | bytearray, start: int = 0, stop: int | None = None) -> Iterator[tuple[int, int]]:
    """(first, count) of every run of set bytes of BITS within [START, STOP), ascending."""
    stop = len(bits) if stop is None else stop
    pos = start
    while pos < stop:
        first = bits.find(1, pos, stop)
        if first < 0:
            return
        end = bits.find(0, first, stop)
        end = stop if end < 0 else end
        yield first, end - first
        pos = end


# --- saved chunks, read on the subsystem's host --------------------------------------
#
# The side store's slots (nbdplugin/slots.py) are a memfd (memory slots) and the spill file,
# both of which a controller on this host opens read-only, like the concordance. Two
# shared tables say where a saved chunk is and whether its slot still holds it
# (controller/backup/saved_read.py gives the argument for exactness):
#
#   slot entry of chunk c, in the concordance at SLOTS + 16 c: two little-endian u64,
#       (g + 1, sequence): global slot g (memory slots 0 .. M-1, then spill slot j as M + j)
#       was taken for c's save with that sequence number. Written before c becomes SAVED,
#       never changed while it is SAVED; (0, 0) while no readable slot holds c.
#   the slot index, a memfd of the side store's own (SLOT_INDEX_HEADER bytes, then one
#       little-endian u64 per global slot): bytes 8 .. 23 the locality token of the session
#       that opened last (what proves a controller maps this host's index); the word of slot
#       g the sequence number of the save that took g last, written when it is taken, before
#       a byte of the slot is written. Sequence numbers grow by one per take, from 1, for the
#       subsystem's life: a slot taken again always gets a word it never held.

SLOT_ENTRY = struct.Struct("<QQ")
SLOT_WORD = struct.Struct("<Q")
SLOT_INDEX_HEADER = 32
INDEXED_SPILL_SLOTS = 1 << 22  # spill slots beyond these are read through the view


def slots_offset(chunks: int) -> int:
    """Where the slot entries start in a concordance of CHUNKS states (8-byte aligned)."""
    return -(-(HEADER + chunks) // 8) * 8


def slot_index_size(memory_slots: int) -> int:
    """Bytes of the slot index of a side store of MEMORY_SLOTS memory slots."""
    return SLOT_INDEX_HEADER + SLOT_WORD.size * (memory_slots + INDEXED_SPILL_SLOTS)
