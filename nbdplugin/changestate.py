"""Change maps on disk: one file per served device in the state directory, so tracking
survives a clean stop and start of the subsystem, and is never trusted after anything else.

    DIR/<key>.map    the change map of the device whose absolute path hashes to KEY
    DIR/<key>.lock   flock'ed while a subsystem serves that device: two subsystems sharing
                     one state directory never share a map

The key is the device's path, not the export's name: two subsystems may both call an export
"disk", and one device served under another name keeps its map. A file written in place of
the old one (a new inode) or a device of another size is caught by the identity check below.

THE FILE: JSON, mode 0600, always replaced whole (a temporary file, fsync, rename, fsync of
the directory), so a crash leaves the old file or the new one, never half of one.

    {"format": "tzero-change-map", "version": 1, "export", "path", "chunk_size", "chunks",
     "state": "running" | "stopped", "saved_at", "identity": {...},
     "generations": [{"id", "time_zero"}, ...], "deltas": [SPAN, ...], "current": SPAN}
    SPAN = {"known": bool, "reason": str, "bits": base64 of zlib of one byte per chunk}

WHEN A MAP IS TRUSTED. Load reads the file and writes it back as "running" before the
subsystem serves its first request; only a clean stop writes "stopped", after every gate is
sealed (no mutation can follow), the device is fsync'ed and its identity taken. So at the
next start the map is trusted only if the file says "stopped" and nothing about the device
moved since: a regular file must keep its inode, size, mtime and ctime (any write, truncate
or replacement changes one of them, and ctime cannot be set back by a user); a block device
its size. A block device written by something else while it was not served (another
program, a subsystem with another state directory) cannot be detected: its map is trusted.
In every other case the map is loaded with its generations but marked unknown, with the
reason, and the next incremental from it is refused.
"""

import base64
import binascii
import fcntl
import hashlib
import json
import os
import threading
import time
import zlib
from typing import Any

from common.fileio import PRIVATE, create_private, fsync_dir, write_all
from nbdplugin.device import Device
from nbdplugin.tracking import ChangeMap, Generation, Span

FORMAT = "tzero-change-map"
VERSION = 1


class StateError(Exception):
    """the state directory or a map in it cannot be used"""


def key_of(path: str) -> str:
    return hashlib.sha256(os.path.abspath(path).encode("utf-8", "surrogateescape")).hexdigest()[:16]


def identity(device: Device) -> dict[str, int]:
    """What must not have moved between a clean stop and the next start."""
    st = os.fstat(device.fd)
    if device.is_block:
        return {"size": device.size}
    return {"size": st.st_size, "ino": st.st_ino, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns}


def _encode(span: Span) -> dict[str, object]:
    return {"known": span.known, "reason": span.reason,
            "bits": base64.b64encode(zlib.compress(bytes(span.bits), 1)).decode("ascii")}


def _decode(doc: Any, count: int) -> Span:
    bits = zlib.decompress(base64.b64decode(doc["bits"], validate=True))
    if len(bits) != count or bits.strip(b"\x00\x01"):
        raise ValueError(f"a map of {len(bits)} chunks, or not of 0 and 1, where {count} were expected")
    return Span(bytearray(bits), bool(doc["known"]), str(doc["reason"]))


class StateDir:
    """The maps of the devices one subsystem serves, in DIR. Made and loaded at start-up by the
    main thread, saved there at cleanup, and by a control connection's thread when a session
    closes normally; `_save_lock` makes saves of one map whole and one at a time."""

    def __init__(self, path: str) -> None:
        # set at start-up, never changed
        self.path = os.path.abspath(path)
        try:
            os.makedirs(self.path, mode=0o700, exist_ok=True)
        except OSError as e:
            raise StateError(f"state directory {self.path}: {e.strerror}") from None
        if not os.access(self.path, os.W_OK | os.X_OK):
            raise StateError(f"state directory {self.path}: not writable")
        self._locks: list[int] = []  # held until the process ends
        self._save_lock = threading.Lock()  # guards the temporary files: one save at a time

    @classmethod
    def probe(cls, path: str, exports: list[tuple[str, str]]) -> None:
        """StateError unless PATH can hold the maps of EXPORTS ([(name, device path)]) now: what
        `tzero serve` checks before nbdkit starts, so that a conflict is one line."""
        state = cls(path)
        try:
            for name, device in exports:
                state._lock(name, os.path.abspath(device))
        finally:
            state.close()

    def file_of(self, device: Device) -> str:
        return os.path.join(self.path, key_of(device.path) + ".map")

    def load(self, device: Device, chunk_size: int) -> ChangeMap:
        """DEVICE's map, trusted or marked unknown with the reason; the file then says "running"."""
        self._claim(device)
        path = self.file_of(device)
        try:
            with open(path, "rb") as f:
                doc = json.loads(f.read())
        except FileNotFoundError:
            m = ChangeMap(device.name, device.size, chunk_size)
            self.save(m, device, "running")
            return m
        except (OSError, ValueError) as e:
            m = ChangeMap(device.name, device.size, chunk_size)
            m.invalidate(f"its change map {path} could not be read ({e})")
            self.save(m, device, "running")
            return m
        m = self._restored(doc, device, chunk_size)
        self.save(m, device, "running")
        return m

    def _restored(self, doc: Any, device: Device, chunk_size: int) -> ChangeMap:
        """The map DOC describes, marked unknown if anything says it may have missed a change."""
        fresh = ChangeMap(device.name, device.size, chunk_size)
        try:
            if doc["format"] != FORMAT or doc["version"] != VERSION:
                raise ValueError(f"not a version {VERSION} change map")
            gens = [Generation(str(g["id"]), float(g["time_zero"])) for g in doc["generations"]]
            if doc["chunk_size"] != chunk_size:
                fresh = ChangeMap(device.name, device.size, chunk_size, gens[-1:])
                fresh.invalidate(f"the chunk size changed from {doc['chunk_size']} to {chunk_size}")
                return fresh
            if doc["chunks"] != fresh.count or doc["identity"].get("size") != device.size:
                fresh = ChangeMap(device.name, device.size, chunk_size, gens[-1:])
                fresh.invalidate(f"the device's size changed from {doc['identity'].get('size')} bytes to "
                                 f"{device.size} while it was not served")
                return fresh
            deltas = [_decode(d, fresh.count) for d in doc["deltas"]]
            m = ChangeMap(device.name, device.size, chunk_size, gens, deltas, _decode(doc["current"], fresh.count))
            problem = self._unclean(doc, device)
        except (KeyError, TypeError, ValueError, IndexError, AttributeError, binascii.Error, zlib.error,
                AssertionError) as e:
            fresh.invalidate(f"its change map could not be read ({type(e).__name__}: {e})")
            return fresh
        if problem:
            m.invalidate(problem)
        return m

    @staticmethod
    def _unclean(doc: Any, device: Device) -> str | None:
        """Why the map may have missed a change since it was saved, or None."""
        saved = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(doc.get("saved_at", 0))))
        if doc["state"] != "stopped":
            return f"the subsystem serving it did not stop cleanly (killed, crashed or lost power) after {saved}"
        was, now = doc["identity"], identity(device)
        if was.get("ino", now.get("ino")) != now.get("ino"):
            return f"{device.path} was replaced by another file while it was not served"
        moved = [k for k in ("mtime_ns", "ctime_ns") if was.get(k) != now.get(k)]
        if moved:
            return f"{device.path} was modified while it was not served (its {' and '.join(moved)} changed)"
        return None

    def save(self, m: ChangeMap, device: Device, state: str) -> None:
        """Write M's file: "running" at start, "stopped" at a clean stop (gates sealed, device synced)."""
        generations, deltas, current = m.state()
        doc = {"format": FORMAT, "version": VERSION, "export": device.name, "path": device.path,
               "chunk_size": m.chunk_size, "chunks": m.count, "state": state, "saved_at": time.time(),
               "identity": identity(device), "generations": [{"id": g.id, "time_zero": g.time_zero}
                                                           for g in generations],
               "deltas": [_encode(d) for d in deltas], "current": _encode(current)}
        path = self.file_of(device)
        tmp = f"{path}.{os.getpid()}.tmp"
        with self._save_lock:
            self._replace(path, tmp, json.dumps(doc, separators=(",", ":")).encode(), device)

    def _replace(self, path: str, tmp: str, body: bytes, device: Device) -> None:
        try:
            fd = create_private(tmp, exclusive=False)  # 0600 even over a stale one of another mode
            try:
                write_all(fd, body, 0)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
            fsync_dir(self.path)
        except OSError as e:
            raise StateError(f"saving the change map of {device.name} to {path}: {e.strerror}") from None

    def _claim(self, device: Device) -> None:
        self._lock(device.name, device.path)

    def _lock(self, name: str, device: str) -> None:
        path = os.path.join(self.path, key_of(device) + ".lock")
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, PRIVATE)
        except OSError as e:
            raise StateError(f"state directory {self.path}: {e.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StateError(f"export {name}: another subsystem serves {device} with its change map "
                             f"in {self.path}") from None
        self._locks.append(fd)

    def close(self) -> None:
        """Let other subsystems have the maps (the process ending does the same)."""
        for fd in self._locks:
            os.close(fd)
        self._locks.clear()
