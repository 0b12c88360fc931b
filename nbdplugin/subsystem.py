"""One storage subsystem: its exports, the current session, and what control requests do.

The control server (control.py) decodes requests and calls `handle`; the nbdkit
callbacks (plugin.py) call `mutate` and the export lookups. Only one session is
open at a time; `_lock` guards `session` and `last_status` transitions, never
the I/O path (writers read `session` once, an atomic attribute read).
"""

from __future__ import annotations

import secrets
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVarTuple

from common.protocol import (
    DEFAULT_CHANGES_LIMIT,
    DEFAULT_DEADLINE_MS,
    DEFAULT_LEASE_MS,
    DEFAULT_SAVED_LIMIT,
    FAILURE_POLICY,
    SUPPORTED_VERSIONS,
    VERSION,
    Message,
    ProtocolError,
    Reply,
    brief,
)
from nbdplugin.device import Device
from nbdplugin.gate import FreezeTimeout, WriteGate
from nbdplugin.session import ACTIVE, FROZEN, OPEN, Session
from nbdplugin.sidestore import SideStore
from nbdplugin.slots import SlotPool
from nbdplugin.tracker import Tracker
from nbdplugin.tracking import ChangeMap

if TYPE_CHECKING:  # control.py imports this module
    from nbdplugin.control import Connection

Ts = TypeVarTuple("Ts")
STOP_WAIT_S = 10.0  # a clean stop waits this long for a session to end and mutations to drain


@dataclass
class Export:
    """One served export: set at start-up, never changed."""

    index: int
    name: str
    device: Device
    gate: WriteGate
    changes: ChangeMap | None = None  # None: change tracking is off


def log(message: str, warning: bool = False) -> None:
    """One line on nbdkit's standard error, which tzero serve passes on as a log line (a warning
    when WARNING: controller/nbd/nbdkit_log.py knows the prefix)."""
    print(f"tzero-plugin: {'warning: ' if warning else ''}{message}", file=sys.stderr, flush=True)


class Subsystem:
    def __init__(self, devices: list[Device], chunk_size: int, side_memory: int, side_dir: str,
                 nbd: dict[str, str | int | bool], spill_keep: int | None = None,
                 tracker: Tracker | None = None) -> None:
        """TRACKER: the exports' change maps (default: in memory only)."""
        # set at start-up, never changed
        # where nbdkit serves: {"socket": PATH} or {"host": ADDR, "port": N, "tls": BOOL}, or {} if not told
        self.nbd = nbd
        self.chunk_size = chunk_size
        self.side_memory = side_memory
        self.slots = SlotPool(side_memory, side_dir, chunk_size, spill_keep)  # every session's side store, kept warm
        self.tracker = tracker or Tracker(devices, chunk_size)
        self.exports: dict[str, Export] = {}
        for i, d in enumerate(devices):
            self.exports[d.name] = Export(i, d.name, d, WriteGate(on_expire=self._freeze_expired),
                                          self.tracker.maps.get(d.name))
        self._lock = threading.Lock()
        # guarded by _lock: replaced under it, read without it (one atomic attribute read)
        self.session: Session | None = None
        self.last_status: dict[str, object] | None = None
        self.stopping = False  # set once, by stop: no session opens after it

    # --- the I/O path ------------------------------------------------------

    def mutate(self, export: Export, offset: int, length: int, apply: Callable[[*Ts], object], *args: *Ts) -> None:
        """Run APPLY(*ARGS) (a write, trim or zero of [offset, offset+length)) through the
        gate, after copy-before-write. The one path every mutation takes."""
        gate = export.gate
        gate.enter()
        try:
            changes = export.changes
            if changes is not None:
                changes.mark(offset, length)
            session = self.session
            if session is not None:
                session.save_before_mutation(export, offset, length)
            apply(*args)
        finally:
            gate.leave()

    def view_session(self, token: str) -> Session | None:
        """The active session whose view token is TOKEN (what follows '@' in a view's name)."""
        s = self.session
        return s if s is not None and s.phase == ACTIVE and s.is_view_token(token) else None

    # --- control requests --------------------------------------------------

    def handle(self, conn: Connection, msg: Message) -> Reply:
        """Carry out one validated request from control connection CONN; returns the reply."""
        op = msg["op"]
        if op == "hello":
            return self._hello(conn, msg)
        if not conn.greeted:
            raise ProtocolError("hello-first", "send hello first")
        if op == "status":
            return self.status()
        if op == "open":
            return self._open(conn, msg)
        session = self._owned(conn)
        handler: Callable[[Session, Message], Reply] = getattr(self, "_" + op)
        return handler(session, msg)

    def _hello(self, conn: Connection, msg: Message) -> Reply:
        if msg["version"] not in SUPPORTED_VERSIONS:
            raise ProtocolError("bad-version",
                                f"protocol version {msg['version']} unsupported (this plugin speaks {VERSION})")
        conn.greeted = True
        return {
            "version": VERSION,
            "exports": [{"name": e.name, "size": e.device.size} for e in self.exports.values()],
            "chunk_size": self.chunk_size,
            "side_memory": self.side_memory,
            "nbd": self.nbd,
            "failure_policy": FAILURE_POLICY,
            "tracking": self.tracker.hello(),
        }

    def _open(self, conn: Connection, msg: Message) -> Reply:
        names: list[str] = msg.get("exports") or list(self.exports)  # parse_request checked: names
        unknown = [n for n in names if n not in self.exports]
        if unknown:
            raise ProtocolError("unknown-export", f"no such export: {brief(', '.join(unknown), 200)}")
        if len(set(names)) != len(names):
            raise ProtocolError("bad-message", "open: an export is named twice")
        lease_ms = msg.get("lease_ms", DEFAULT_LEASE_MS)  # within the protocol's bounds
        track = self._checked_ranges("track", msg.get("track", {}), names)
        keep = self._checked_ranges("keep", msg.get("keep", {}), names)
        since_ids = Tracker.checked_since(msg.get("since", {}), names)
        with self._lock:
            if self.stopping:
                raise ProtocolError("busy", "busy: the subsystem is stopping")
            if self.session is not None and (self.session.alive or not self.session.ended.is_set()):
                s = self.session
                raise ProtocolError("busy", f"busy: another backup's session ({s.sid}) is {s.phase} on this "
                                    "subsystem; try again once it is over")
            side = SideStore(self.slots)
            exports = [self.exports[n] for n in names]
            # The reply names the session made here: once the lock is released a lease may
            # expire and another client open a new one, so self.session is not ours to read.
            s = self.session = Session(
                secrets.token_hex(4), exports, self.chunk_size, side, lease_ms / 1000, conn,
                on_end=self._session_ended, track=track, keep=keep, generation=secrets.token_hex(8),
                tracking={e.index: e.changes for e in exports if e.changes is not None})
        # Asked only now that the session is the subsystem's: the one before it has ended and
        # committed its generation (or merged back), and no other can until this one ends.
        since = {n: self.tracker.since(n, g) for n, g in since_ids.items()}
        s.prepare({self.exports[n].index: k for n, k in since.items()})
        for e in exports:  # counted in the session's concordance header, for --rate auto
            e.gate.writes = s.maps[e.index].writes_word()
        log(f"session {s.sid} opened on {', '.join(names)}")
        self.slots.claim(s.locality_token)  # the sessions before it have ended: nobody reads by the old token
        side_slots = self.slots.shared()
        local = {e.name: {"concordance": s.maps[e.index].shared(), "device": e.device.identity(), "side": side_slots}
                 for e in exports}
        return {"session": s.sid, "views": {n: s.view_name(n) for n in names}, "local": local,
                "generation": s.generation if self.tracker.enabled else None,
                "changes": {n: {"known": k.known, "reason": k.reason or None, "time_zero": k.time_zero}
                            for n, k in since.items()}}

    def _checked_ranges(self, field: str, value: dict[str, list[list[int]]],
                        names: list[str]) -> dict[str, list[tuple[int, int]]]:
        """open's "track" or "keep" field ({export: [[offset, length], ...]}, its types checked by
        parse_request), within each export of the session."""
        checked: dict[str, list[tuple[int, int]]] = {}
        for name, ranges in value.items():
            if name not in names:
                raise ProtocolError("unknown-export", f"{field} names {brief(name)}, which is not in the session")
            size = self.exports[name].device.size
            for r in ranges:
                if r[1] <= 0 or r[0] + r[1] > size:
                    raise ProtocolError("bad-message", f"open: {field} range {r} is not within {name} ({size} bytes)")
            checked[name] = [(r[0], r[1]) for r in ranges]
        return checked

    def _owned(self, conn: Connection) -> Session:
        """The session CONN owns and may drive. A session that ended is `no-session` to everyone
        but its owner, who learns why it ended (`aborted` with the reason)."""
        s = self.session
        if s is None or (not s.alive and s.owner is not conn):
            raise ProtocolError("no-session", "no session is open")
        if s.owner is not conn:
            raise ProtocolError("not-owner", f"session {s.sid} belongs to another connection")
        s.last_seen = time.monotonic()
        if not s.alive:
            raise ProtocolError("aborted" if s.abort_reason else "no-session",
                                s.abort_reason or f"session {s.sid} is {s.phase}")
        return s

    def _freeze(self, s: Session, msg: Message) -> Reply:
        if s.phase != OPEN:
            raise ProtocolError("wrong-phase", f"freeze needs an open session, this one is {s.phase}")
        deadline_s = msg.get("deadline_ms", DEFAULT_DEADLINE_MS) / 1000
        # No flush while the gates are closed: the views and copy-before-write read through
        # the same page cache the writes went to, so time zero's content does not need to be
        # on stable storage to be backed up, and a flush in the gate would hold every
        # application write for as long as it takes. It runs after thaw (see _thaw).
        s.flush_at_thaw = msg.get("flush", True)
        frozen = []
        try:
            for e in s.exports:
                e.gate.freeze(deadline_s)
                frozen.append(e)
        except FreezeTimeout as e:
            for f in frozen:
                f.gate.thaw()
            s.abort(f"freeze failed: {e}")
            raise ProtocolError("freeze-failed", str(e)) from None
        s.form_concordance()
        s.set_phase(FROZEN)
        return {"time_zero": s.time_zero}

    def _thaw(self, s: Session, msg: Message) -> Reply:
        if s.phase != FROZEN:
            raise ProtocolError("wrong-phase", f"thaw needs a frozen session, this one is {s.phase}")
        # Active before any gate opens: a write the thaw admits must find the session active and
        # save its chunk first; the other way round it could slip through unsaved.
        s.set_phase(ACTIVE)
        s.pause_s = {e.name: e.gate.thaw() for e in s.exports}
        if not s.alive:  # the deadline struck between our check and the thaw
            raise ProtocolError("aborted", s.abort_reason or "aborted")
        if s.flush_at_thaw:
            s.flushed.clear()
            threading.Thread(target=self._flush_after_thaw, args=(s,), name="tzero-flush", daemon=True).start()
        return {"pause_ms": {k: v * 1000 for k, v in s.pause_s.items()}}

    @staticmethod
    def _flush_after_thaw(s: Session) -> None:
        """Make time zero durable on the source, beside the copy rather than before it.

        Every write acknowledged before time zero reached the page cache before the gates
        closed, so one flush after thaw makes time zero durable without holding any writer,
        and on its own thread it does not hold up the thaw reply, so the copy starts at once.
        A failing flush aborts the session; close waits for the flush, so no backup completes
        before time zero is durable."""
        try:
            for e in s.exports:
                e.device.flush()
        except OSError as e:
            s.abort(f"flush after thaw failed: {e.strerror or e}")
        finally:
            s.flushed.set()

    def _export_of(self, s: Session, name: str) -> Export:
        e = self.exports.get(name)
        if e is None or e not in s.exports:
            raise ProtocolError("unknown-export", f"{brief(name)} is not in session {s.sid}")
        if s.phase != ACTIVE:
            raise ProtocolError("wrong-phase", f"the session is {s.phase}, not active")
        return e

    def _release(self, s: Session, msg: Message) -> Reply:
        e = self._export_of(s, msg["export"])
        for r in msg["ranges"]:  # [first, count] pairs of integers, as parse_request checked
            try:
                s.release(e, r[0], r[1])
            except ValueError as err:
                raise ProtocolError("bad-message", str(err)) from None
        return self._pulse(s)

    def _saved(self, s: Session, msg: Message) -> Reply:
        e = self._export_of(s, msg["export"])
        return {"chunks": s.saved_chunks(e, msg.get("limit", DEFAULT_SAVED_LIMIT))}

    def _changes(self, s: Session, msg: Message) -> Reply:
        e = self._export_of(s, msg["export"])
        changed = s.changed.get(e.index)
        if changed is None:
            raise ProtocolError("bad-message", f"changes: open did not name a known base for {e.name} in since")
        return Tracker.changes(changed, msg.get("first", 0), msg.get("limit", DEFAULT_CHANGES_LIMIT))

    def _heartbeat(self, s: Session, msg: Message) -> Reply:
        if "copier" in msg:
            s.copier_stats = msg["copier"]
        return self._pulse(s)

    def _pulse(self, s: Session) -> Reply:
        """What the controller needs on every round trip: is the session alive, is there pressure,
        how many writes the session's exports admitted (what --rate auto yields to)."""
        if not s.alive:
            raise ProtocolError("aborted", s.abort_reason or s.phase)
        return {
            "phase": s.phase,
            "pressure": s.side.pressure,
            "side_bytes": s.side.memory_bytes + s.side.spill_bytes,
            "chunks_cow": s.cow_chunks,
            "writes": sum(int(s.maps[e.index].writes_word()[0]) for e in s.exports),
        }

    def _close(self, s: Session, msg: Message) -> Reply:
        s.flushed.wait()
        if not s.alive:
            raise ProtocolError("aborted", s.abort_reason or s.phase)
        status = s.status()
        s.close()
        return {"status": status}

    def _abort(self, s: Session, msg: Message) -> Reply:
        s.abort(msg.get("reason") or "aborted by the controller")
        return {}

    # --- endings that come from outside a request ---------------------------

    def _session_ended(self, s: Session) -> None:
        for e in s.exports:  # the next session opens only once this one has ended
            e.gate.writes = None
        status = s.status()
        with self._lock:
            self.last_status = status
        if s.abort_reason:
            log(f"session {s.sid} aborted: {s.abort_reason}")
        else:
            log(f"session {s.sid} closed ({s.cow_chunks} chunks saved by copy-before-write)")
            self.tracker.committed([e.name for e in s.exports], log)

    def connection_closed(self, conn: Connection) -> None:
        s = self.session
        if s is not None and s.owner is conn and s.alive:
            s.abort("the controller's control connection closed")

    def _freeze_expired(self) -> None:
        s = self.session
        if s is not None:
            s.abort("freeze deadline expired before thaw")

    def stop(self) -> None:
        """A clean stop (nbdkit's cleanup, on its main thread): end the session (its frozen
        change maps merge back), seal every gate so that no mutation follows, save the maps.
        Mutations that reach a sealed gate wait until the process ends and are never applied."""
        with self._lock:
            self.stopping = True
        s = self.session
        if s is not None:
            s.abort("the subsystem is stopping")
            s.ended.wait(STOP_WAIT_S)
        drained = {e.name: e.gate.seal(STOP_WAIT_S) for e in self.exports.values()}
        self.tracker.stopped(self.exports, drained, log)

    def watchdog_tick(self) -> None:
        """Called periodically: expire overdue freezes and leases."""
        for e in self.exports.values():
            e.gate.expire_if_due()
        s = self.session
        if s is not None and s.alive and time.monotonic() - s.last_seen > s.lease_s:
            s.abort(f"lease expired: no word from the controller for {s.lease_s:g} s")

    def status(self) -> Reply:
        s = self.session
        return {
            "exports": [{"name": e.name, "size": e.device.size} for e in self.exports.values()],
            "chunk_size": self.chunk_size,
            "side_memory": self.side_memory,
            "spill_file_bytes": self.slots.spill_file_bytes,
            "session": s.status() if s is not None and s.alive else None,
            "last_session": self.last_status,
            "tracking": self.tracker.status(),
        }
