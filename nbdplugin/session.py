"""One backup session on one storage subsystem: the concordance, copy-before-write,
the time-zero view and release.

Lifecycle: OPEN -> (freeze) FROZEN -> (thaw) ACTIVE -> CLOSED, or ABORTED from any
phase. The concordance is formed while FROZEN, when no mutation is in flight, so
every chunk starts PENDING with its time-zero content in place.

Failure policy: common.protocol.FAILURE_POLICY, "break-backup" (the `hello` reply names
it): break the backup, never the application. Any error while saving an old chunk (side
store full, device read error) aborts the session and lets the mutation proceed. The
first abort reason is sticky. Once aborted, view reads fail, so no mixed image can be
read out.

Change tracking (tracking.py): at time zero the session freezes the change map of each of
its exports and a new one starts; when the session closes normally its time zero becomes
the exports' newest generation (`generation`), when it ends any other way the frozen maps
are merged back. With `since`, the exports whose changes since a base are known keep only
their changed chunks (and the `keep` ranges) PENDING: the rest are in the base already,
and cost no copy-before-write. The narrowing is done at open (`prepare`: whole-map integer
operations, about 0.45 s per TiB of 64 KiB chunks here) on the changes up to then; the
freeze only adds the chunks changed between open and time zero (a scan for set bytes).

An abort's clean-up (thaw the gates, close the maps, give the side store's slots back,
on_end) runs on the thread that aborts; nbdplugin/__init__.py lists which those are and
the locks they may hold.
"""

from __future__ import annotations

import errno
import hmac
import secrets
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, NoReturn

from common.concordance import TOKEN_SIZE, runs
from common.fileio import WritableBuffer
from nbdplugin.chunkmap import DONE, PENDING, SAVED, ChunkMap
from nbdplugin.sidestore import SideStore, SideStoreFull
from nbdplugin.tracking import ChangeMap, Generation, Since, as_int

if TYPE_CHECKING:  # both import this module
    from nbdplugin.control import Connection
    from nbdplugin.subsystem import Export

OPEN, FROZEN, ACTIVE, CLOSED, ABORTED = "open", "frozen", "active", "closed", "aborted"
VIEW_TOKEN_BYTES = 16  # 128 random bits: not to be guessed, even by a client allowed to try many names
RELEASE_BATCH = 128  # chunks one step of release holds the stripe locks of
_DONE_RUN = bytes([DONE]) * RELEASE_BATCH
_CHANGED_IF_TRACKED = bytes.maketrans(bytes([PENDING, DONE]), b"\x01\x00")  # chunk states at open -> changed


class Session:
    def __init__(self, sid: str, exports: list[Export], chunk_size: int, side: SideStore, lease_s: float,
                 owner: Connection, on_end: Callable[[Session], None] | None = None,
                 track: dict[str, list[tuple[int, int]]] | None = None, tracking: dict[int, ChangeMap] | None = None,
                 keep: dict[str, list[tuple[int, int]]] | None = None, generation: str | None = None) -> None:
        # set at open, never changed
        self.sid = sid
        self.exports = exports
        self.chunk_size = chunk_size
        self.side = side  # locks itself
        self.lease_s = lease_s
        self.owner = owner  # the control connection that opened it
        self.on_end = on_end  # called once, with the session, after it closed or aborted
        self.track = track or {}  # export name -> [(offset, length)]; absent: tracked whole
        self.opened_at = time.monotonic()
        # The view names' secret part: the only proof an NBD client holds the session, so it goes
        # only to the owner (the open reply), never to status, a log or an error message.
        self.view_token = secrets.token_hex(VIEW_TOKEN_BYTES)
        self.locality_token = secrets.token_bytes(TOKEN_SIZE)  # common/concordance.py says what it proves
        # export index -> map (the stripe locks guard its states: chunkmap.py). Built here, before
        # the gates close, so that the freeze costs no allocation: its states only start to count
        # at time zero, because nothing changes them before the session is ACTIVE.
        self.maps: dict[int, ChunkMap] = {e.index: ChunkMap(e.device.size, chunk_size, self.track.get(e.name),
                                                            self.locality_token)
                                          for e in exports}
        self.tracking = tracking or {}  # export index -> its change map (locks itself); absent: not tracked
        self.generation = generation or sid  # what the exports' newest generation becomes at close
        self.keep = keep or {}  # export name -> byte ranges kept tracked, changed or not (prepare)
        self._lock = threading.Lock()
        # guarded by _lock: changed under it, read anywhere (an attribute read is atomic)
        self.phase = OPEN
        self.abort_reason: str | None = None
        self._frozen_maps: list[ChangeMap] = []  # frozen by prepare or form_concordance; resolved once, at the end
        self._tracked: dict[int, bytes] = {}  # export index -> its chunk states before prepare narrowed them
        # written by prepare and form_concordance under _lock, read after by the owner's control thread
        self.changed: dict[int, bytearray] = {}  # export index -> its tracked chunks changed since the base (0/1)
        # written by the owner's control thread only (read by `status` from any connection, the watchdog)
        self.time_zero = 0.0  # wall clock when the concordance was formed
        self.pause_s: dict[str, float] = {}
        self.flush_at_thaw = True  # set by freeze: make time zero durable once the gates reopen
        self.copier_stats: dict[str, object] = {}  # the controller's counters, as its last heartbeat gave them
        self.last_seen = self.opened_at  # renewed by every message from the owner
        # thread-safe itself: thaw clears it, the flush thread sets it, close waits for it
        self.flushed = threading.Event()  # clear while the flush after thaw runs, set otherwise
        self.flushed.set()
        self.ended = threading.Event()  # set once an ended session's clean-up (maps resolved) is over
        # statistics (approximate, no lock)
        self.cow_chunks = 0
        self.released_bytes = 0

    def view_name(self, export: str) -> str:
        return f"{export}@{self.view_token}"

    def is_view_token(self, token: str) -> bool:
        """Whether TOKEN is this session's view token (compared in constant time)."""
        return hmac.compare_digest(token.encode(), self.view_token.encode())

    @property
    def alive(self) -> bool:
        return self.phase in (OPEN, FROZEN, ACTIVE)

    def form_concordance(self) -> None:
        """Make the chunk maps the concordance; called while all the gates are frozen.

        The maps were built at open and nothing has touched them since (copy-before-write,
        view reads and release all need an ACTIVE session), so every tracked chunk is still
        PENDING with its content in place: forming reads no data. It freezes the change maps
        (a swap each), and where `prepare` narrowed the concordance, adds back the tracked chunks
        changed since then."""
        with self._lock:
            if not self.alive:
                return  # an abort won the race: it resolves only the maps frozen before it
            self.time_zero = time.time()
            for e in self.exports:
                cm = self.tracking.get(e.index)
                if cm is None:
                    continue
                frozen = cm.freeze()
                if cm not in self._frozen_maps:
                    self._frozen_maps.append(cm)
                if e.index in self._tracked:
                    self._add_changed(e.index, frozen)

    def prepare(self, since: dict[int, Since]) -> None:
        """At open, once the session is the subsystem's (so no other can commit a generation, and
        SINCE, export index -> what its change map says of the controller's base, was asked after
        that), outside the subsystem's lock, since this is the slow part: for each export whose
        changes since the base are known, freeze its change map a first time and narrow the
        concordance to the chunks changed since the base so far, and the `keep` ranges."""
        with self._lock:
            if not self.alive:
                return
            for e in self.exports:
                known = since.get(e.index)
                if known is None or not known.known:
                    continue
                cm = self.tracking[e.index]
                first = cm.freeze()
                self._frozen_maps.append(cm)
                m = self.maps[e.index]
                self._tracked[e.index] = bytes(m.states)
                keep = self._keep_int(m, self.keep.get(e.name, []))
                self.changed[e.index] = bytearray(m.narrow((known.base or 0) | as_int(first), keep))

    def _add_changed(self, index: int, frozen: bytes | bytearray) -> None:
        """Chunks changed between prepare and time zero: tracked ones are PENDING again. Costs a
        scan of FROZEN for set bytes and a few slice copies per run: nothing per unchanged chunk."""
        m, tracked, changed = self.maps[index], self._tracked[index], self.changed[index]
        for first, count in runs(frozen):
            stop = first + count
            m.untracked += tracked.count(DONE, first, stop) - m.states[first:stop].tobytes().count(DONE)
            m.states[first:stop] = tracked[first:stop]
            changed[first:stop] = tracked[first:stop].translate(_CHANGED_IF_TRACKED)
    @staticmethod
    def _keep_int(m: ChunkMap, ranges: list[tuple[int, int]]) -> int:
        keep = bytearray(m.count)
        for offset, length in ranges:
            span = m.span(offset, length)
            keep[span.start:span.stop] = b"\x01" * len(span)
        return as_int(keep)

    def set_phase(self, phase: str) -> None:
        with self._lock:
            if self.alive:
                self.phase = phase

    def abort(self, reason: str) -> bool:
        """End the session as failed; the first reason sticks. Returns False if it had already ended."""
        with self._lock:
            if not self.alive:
                return False
            self._mark_dead()
            self.phase = ABORTED
            self.abort_reason = reason
        self._release_resources()
        return True

    def close(self) -> None:
        with self._lock:
            if not self.alive:
                return
            self._mark_dead()
            self.phase = CLOSED
        self._release_resources()

    def _mark_dead(self) -> None:
        # Before the phase changes: a mutation that sees the new phase skips copy-before-write,
        # so a controller reading the device directly must be able to know it by then.
        for m in self.maps.values():
            m.mark_dead()

    def _release_resources(self) -> None:
        for e in self.exports:
            e.gate.thaw()
        for m in self.maps.values():
            m.close()
        self.side.close()
        # The phase is final and form_concordance checked it under _lock: _frozen_maps is complete.
        for cm in self._frozen_maps:
            if self.phase == CLOSED:
                cm.commit(Generation(self.generation, self.time_zero))
            else:
                cm.merge_back()
        if self.on_end is not None:
            self.on_end(self)
        self.ended.set()

    # --- copy-before-write -------------------------------------------------

    def save_before_mutation(self, export: Export, offset: int, length: int) -> None:
        """Save the old content of every PENDING chunk a mutation will touch.

        Called inside the export's write gate, before the mutation is applied.
        Never raises: a failure aborts the session instead.
        """
        m = self.maps.get(export.index)
        if m is None or self.phase != ACTIVE:
            return
        states = m.states
        for c in m.span(offset, length):
            # Read without the stripe lock, so that a chunk already SAVED or DONE (every write
            # after its chunk's first) costs one byte read and no lock. Safe because while the
            # session is ACTIVE a state only moves forward: PENDING -> SAVED (here, under the
            # lock), PENDING or SAVED -> DONE (release, under it), never back to PENDING (only
            # form_concordance writes PENDING, with every gate closed, before ACTIVE; prepare only
            # narrows to DONE, before that). A non-PENDING state read here is therefore final
            # for copy-before-write: the time-zero content is saved or already in the backup.
            # A PENDING one may be stale, so it is checked again under the lock.
            if states[c] != PENDING:
                continue
            with m.lock(c):
                if states[c] != PENDING or self.phase != ACTIVE:
                    continue
                start, n = m.extent(c)
                try:
                    entry = self.side.save((export.index, c), export.device, start, n)
                except SideStoreFull as e:
                    self.abort(f"side store full: {e}")
                    return
                except OSError as e:
                    self.abort(f"copy-before-write of {export.name} chunk {c} failed: {e.strerror or e}")
                    return
                m.publish_slot(c, entry)  # before SAVED: a local reader trusts the entry of a SAVED chunk
                states[c] = SAVED
                self.cow_chunks += 1

    # --- the time-zero view ------------------------------------------------

    def read_view(self, export: Export, buf: WritableBuffer, offset: int) -> None:
        """Fill BUF with EXPORT's time-zero content at OFFSET, or raise OSError(EIO).

        Holds the stripe locks of every chunk the read touches (ascending, as chunkmap.py
        requires of readers) for the whole read, so that each run of PENDING chunks is one
        preadv straight into BUF: one system call and one release of the GIL per run
        instead of per chunk. A mutation of one of these chunks waits for the read; it
        then saves the chunk and goes on.
        """
        m = self._map(export)
        view = memoryview(buf)
        end = offset + len(view)
        chunks = m.span(offset, len(view))
        if not chunks:
            return
        locks = m.locks_for(chunks.start, chunks.stop - 1)
        for lock in locks:
            lock.acquire()
        try:
            if m.count_of(PENDING, chunks.start, chunks.stop) == len(chunks):
                export.device.read_into(view, offset)  # the common case: all still in place
            else:
                self._read_mixed(export, m, view, offset, end, chunks)
            # A mutation racing an abort skips copy-before-write, so a read
            # that overlapped an abort cannot be trusted.
            if self.phase != ACTIVE:
                self._raise_dead()
        finally:
            for lock in reversed(locks):
                lock.release()

    def _read_mixed(self, export: Export, m: ChunkMap, view: memoryview, offset: int, end: int,
                    chunks: range) -> None:
        """read_view's general case, under the chunks' locks: runs of PENDING chunks from the
        device, SAVED chunks from the side store, EIO for a released one."""
        states = m.states
        run: int | None = None  # device offset where the current run of PENDING chunks starts
        for c in chunks:
            start, n = m.extent(c)
            lo, hi = max(offset, start), min(end, start + n)
            state = states[c]
            if state == PENDING:
                run = lo if run is None else run
                continue
            if run is not None:
                export.device.read_into(view[run - offset : lo - offset], run)
                run = None
            if state == SAVED:
                if not self.side.read_into((export.index, c), view[lo - offset : hi - offset], lo - start):
                    self._raise_dead()
            else:
                raise OSError(errno.EIO, f"{export.name}@{self.sid}: chunk {c} was already released")
        if run is not None:
            export.device.read_into(view[run - offset : end - offset], run)

    def _map(self, export: Export) -> ChunkMap:
        m = self.maps.get(export.index)
        if m is None or self.phase != ACTIVE:
            self._raise_dead()
        return m

    def _raise_dead(self) -> NoReturn:
        raise OSError(errno.EIO, f"session {self.sid} is {self.phase}: {self.abort_reason or 'no time-zero view'}")

    # --- release -----------------------------------------------------------

    def release(self, export: Export, first: int, count: int) -> None:
        """Chunks FIRST..FIRST+COUNT-1 are in the backup: drop saved copies, stop tracking them.

        In batches of RELEASE_BATCH chunks, each under its chunks' stripe locks (ascending, as a
        view read takes them): the states are read and written a batch at a time, so the GIL is
        held for a few slice operations per batch rather than a lock and a lookup per chunk; a
        writer of one of the batch's chunks waits no longer than the batch's saved copies take
        to be given back."""
        m = self._map(export)
        if first < 0 or count < 0 or first + count > m.count:
            raise ValueError(f"chunks {first}+{count} out of range for {export.name} ({m.count} chunks)")
        for start in range(first, first + count, RELEASE_BATCH):
            self._release_batch(export, m, start, min(start + RELEASE_BATCH, first + count))

    def _release_batch(self, export: Export, m: ChunkMap, start: int, stop: int) -> None:
        locks = m.locks_for(start, stop - 1)
        for lock in locks:
            lock.acquire()
        try:
            states = m.states
            batch = states[start:stop].tobytes()
            c = batch.find(SAVED)
            while c >= 0:
                self.side.discard((export.index, start + c))
                c = batch.find(SAVED, c + 1)
            owed = len(batch) - batch.count(DONE)
            if owed:
                released = owed * m.chunk_size
                if stop == m.count and batch[-1] != DONE:  # the last chunk may be short
                    released -= m.chunk_size - m.extent(stop - 1)[1]
                self.released_bytes += released
                states[start:stop] = _DONE_RUN[:stop - start]
        finally:
            for lock in reversed(locks):
                lock.release()

    def saved_chunks(self, export: Export, limit: int) -> list[int]:
        self._map(export)
        return self.side.keys(export.index, limit)

    # --- reporting ---------------------------------------------------------

    def status(self) -> dict[str, object]:
        elapsed = max(time.monotonic() - self.opened_at, 1e-9)
        exports: dict[str, dict[str, int] | None] = {}
        for e in self.exports:
            m = self.maps.get(e.index)
            exports[e.name] = m.counts() if m is not None else None
        return {
            "session": self.sid,
            "phase": self.phase,
            "abort_reason": self.abort_reason,
            "exports": exports,
            "chunks_cow": self.cow_chunks,
            "side_memory_bytes": self.side.memory_bytes,
            "side_spill_bytes": self.side.spill_bytes,
            "side_peak_bytes": self.side.peak_bytes,
            "pressure": self.side.pressure,
            "released_bytes": self.released_bytes,
            "rate_bytes_per_s": self.released_bytes / elapsed,
            "pause_ms": {k: v * 1000 for k, v in self.pause_s.items()},
            "copier": self.copier_stats,
        }
