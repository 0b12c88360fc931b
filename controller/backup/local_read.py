"""Reading a time-zero view straight from the device, when the controller runs on the host
of the subsystem that serves it.

Why: over NBD every byte backed up is copied three times on its way to the controller
(the plugin's pread into nbdkit's buffer, nbdkit's send into the socket, our receive
out of it) and passes through the plugin's Python; read here it is copied once, by one
preadv into the controller's buffer, and the plugin's workers stay free for the
applications' writes.

Why it is exact. The plugin keeps its concordance in a shared mapping that we map
read-only (chunkmap.py). For every chunk c it holds that:
  1. a mutation of c is applied only after c's state left PENDING (copy-before-write
     marks it SAVED, under the chunk's lock, before the write goes to the device), and
  2. a state never returns to PENDING within a session.
We read a run of chunks with preadv and only then load their states. If c is still
PENDING at that load, no mutation of c had been applied when the load ran, so none was
applied before or while we read: what we read is c's time-zero content. A chunk found
SAVED is read again out of the side store's slot that holds its copy, on this host too
(saved_read.py gives that argument: a slot taken again while we read it is detected by
its sequence word); a chunk whose slot is not readable here or moved, or found in any
other state, is read again through the NBD view, which serves its saved copy. The
ordering this needs (the plugin's state store before its data stores, our data loads
before our state load) is what x86-64 guarantees between processes
(total store order, loads not reordered with loads); elsewhere this path is not used.
Mutations skip copy-before-write once a session stops being active, so the plugin sets
the mapping's DEAD flag before that; we load it after the states and give up if it is
set (the read fails like a view read of a dead session).

Used only when all of this holds: Linux on x86-64; the concordance path names a regular
file that maps with the size the plugin said and holds, in its header, the session's
locality token (128 random bits the `open` reply also carries: common/concordance.py);
and the device path opens read-only and is the very file or device the plugin serves
(same st_dev, st_ino, st_rdev). The token comes first: it is what tells this host from
another, since a subsystem on another host names paths (/proc/PID/fd/N, /dev/sdb) that
may well exist here and even carry the same inode numbers. Nothing is opened that could
block (a FIFO by that name here), and nothing but those two paths is opened (and the side
store's three, saved_read.py). Otherwise the view is read over NBD.
"""

import errno
import hmac
import mmap
import os
import platform
import stat
from typing import NotRequired, TypedDict

import nbd

from common.concordance import (
    DEAD_OFFSET,
    HEADER,
    PENDING,
    SAVED,
    SLOT_ENTRY,
    TOKEN_OFFSET,
    TOKEN_SIZE,
    WRITES_OFFSET,
    chunk_count,
    mapping_size,
    slots_offset,
)
from common.fileio import read_fully
from controller.backup.saved_read import SavedRead, SideInfo

ARCHES = ("x86_64", "amd64")


class DeviceIdentity(TypedDict):
    """The device or file the plugin serves, as fstat sees it there."""

    path: str
    dev: int
    ino: int
    rdev: int


class SharedConcordance(TypedDict):
    """Where the session's concordance maps, and its shape."""

    path: str
    header: int
    chunk_size: int
    chunks: int
    token: str  # hex: the locality token the plugin wrote at TOKEN_OFFSET
    slots: NotRequired[int]  # where the chunks' slot entries start; absent from older subsystems


class LocalInfo(TypedDict):
    """What `open` says of one export for reading it on this host (docs/control-protocol.md)."""

    device: DeviceIdentity
    concordance: SharedConcordance
    side: NotRequired[SideInfo]  # where saved chunks are (saved_read.py); absent from older subsystems


def _map_concordance(conc: SharedConcordance, size: int) -> mmap.mmap:
    """The session's concordance, mapped read-only, once it proved to be this session's (the
    locality token): ValueError or OSError saying why not."""
    entries = "slots" in conc  # an older tzero serve publishes no slot entries: its states only
    if conc.get("header") != HEADER or (entries and conc.get("slots") != slots_offset(conc.get("chunks", 0))):
        raise ValueError(f"the concordance's layout (header {conc.get('header')}) is not this tzero's")
    if chunk_count(size, conc["chunk_size"]) != conc["chunks"]:
        raise ValueError("the concordance does not match the export's size")
    try:
        token = bytes.fromhex(conc.get("token", ""))
    except ValueError:
        token = b""
    if len(token) != TOKEN_SIZE or not any(token):  # zeros: what any zero-filled file holds there
        raise ValueError("the subsystem gave no locality token")
    try:
        fd = os.open(conc["path"], os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as e:
        raise ValueError(f"the subsystem runs on another host, or hides its concordance ({e.strerror})") from None
    try:
        st = os.fstat(fd)
        length = mapping_size(conc["chunks"]) if entries else HEADER + conc["chunks"]
        if not stat.S_ISREG(st.st_mode) or st.st_size < length:
            raise ValueError("the subsystem runs on another host (its concordance is not here)")
        shared = mmap.mmap(fd, length, access=mmap.ACCESS_READ)
    finally:
        os.close(fd)
    if not hmac.compare_digest(shared[TOKEN_OFFSET:TOKEN_OFFSET + TOKEN_SIZE], token):
        shared.close()
        raise ValueError("the subsystem runs on another host (its concordance is not here)")
    return shared


class LocalRead:
    """One export's device, opened here, its session's concordance, mapped read-only, and
    the side store's slots where they open here (`slots`, else None)."""

    def __init__(self, fd: int, shared: mmap.mmap, conc: SharedConcordance, export: str,
                 saved: SavedRead | None = None, slots_why: str = ""):
        # Set at open, never changed.
        self._fd = fd
        self._shared = shared
        self._chunk = conc["chunk_size"]
        self._entries = slots_offset(conc["chunks"])
        self.export = export
        self.slots = saved
        self.slots_why = slots_why  # why saved chunks are read through the view, if they are
        # Statistics (copy loop only).
        self.fixed_bytes = 0  # bytes read again through the view because their chunk had changed state

    @classmethod
    def open(cls, export: str, info: LocalInfo | None, size: int) -> tuple["LocalRead | None", str]:
        """(LocalRead, "") when EXPORT can be read here, else (None, why not)."""
        if not info:
            return None, "the subsystem offers no local reads"
        if platform.system() != "Linux" or platform.machine() not in ARCHES:
            return None, f"local reads need Linux on x86-64, this is {platform.system()} on {platform.machine()}"
        dev, conc = info["device"], info["concordance"]
        try:
            shared = _map_concordance(conc, size)
        except (OSError, ValueError) as e:
            return None, getattr(e, "strerror", None) or str(e)
        try:
            fd = os.open(dev["path"], os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError as e:
            shared.close()
            return None, f"{dev['path']}: {e.strerror}"
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino, st.st_rdev) != (dev["dev"], dev["ino"], dev["rdev"]):
            os.close(fd)
            shared.close()
            return None, f"{dev['path']} here is not the file the subsystem serves"
        os.set_blocking(fd, True)
        if "slots" in conc:
            saved, why = SavedRead.open(info.get("side"), bytes.fromhex(conc["token"]), conc["chunk_size"])
        else:
            saved, why = None, "the subsystem publishes no slot entries"
        return cls(fd, shared, conc, export, saved, why), ""

    def read(self, view: memoryview, offset: int) -> list[tuple[int, int]]:
        """Fill VIEW with the time-zero bytes at OFFSET: the device's, and saved chunks' out of
        their slots; returns the (offset, length) runs, within it, still to be read through
        the view (chunks neither PENDING nor readable out of their slot once read).
        nbd.Error (EIO) if the session stopped saving chunks meanwhile."""
        try:
            read_fully(self._fd, view, offset, self.export)
        except OSError as e:
            raise nbd.Error(str(e), e.errno or errno.EIO) from None
        first, last = offset // self._chunk, (offset + len(view) - 1) // self._chunk
        states = self._shared[HEADER + first:HEADER + last + 1]  # loaded after the data
        if self._shared[DEAD_OFFSET]:
            raise nbd.Error(f"{self.export}: the session ended while its view was being read", errno.EIO)
        if states.count(PENDING) == len(states):
            return []
        runs: list[tuple[int, int]] = []
        end = offset + len(view)
        for i, state in enumerate(states):
            if state == PENDING:
                continue
            c = first + i
            lo, hi = max(offset, c * self._chunk), min(end, (c + 1) * self._chunk)
            if state == SAVED and self._read_saved(c, view[lo - offset:hi - offset], lo - c * self._chunk):
                continue
            if runs and runs[-1][0] + runs[-1][1] == lo:
                runs[-1] = (runs[-1][0], runs[-1][1] + hi - lo)
            else:
                runs.append((lo, hi - lo))
        self.fixed_bytes += sum(n for _, n in runs)
        return runs

    def writes_admitted(self) -> int:
        """The writes the export's gate admitted in this session (the concordance header's count:
        common/concordance.py), for --rate auto; one 8-byte load, a stale value only paces."""
        return int.from_bytes(self._shared[WRITES_OFFSET:WRITES_OFFSET + 8], "little")

    def _read_saved(self, chunk: int, view: memoryview, start: int) -> bool:
        """CHUNK's saved bytes from START on into VIEW, out of its slot (loaded as SAVED before)."""
        if self.slots is None:
            return False
        entry: tuple[int, int] = SLOT_ENTRY.unpack_from(self._shared, self._entries + SLOT_ENTRY.size * chunk)
        return self.slots.read(entry, view, start)

    def close(self) -> None:
        self._shared.close()
        os.close(self._fd)
        if self.slots is not None:
            self.slots.close()
