"""The consistency group: one backup session on every subsystem, frozen and thawed together.

Freeze is all or none: a request goes to every subsystem before any reply is
awaited; if one fails, every session is aborted (which thaws its gates) and the
backup fails. Time zero is the moment the last gate closed, so every export's
content is the content it held while all gates were closed together.

A heartbeat thread renews every lease and picks up side-store pressure and
aborts; the copier reads `failure` and `pressure` between steps.

Threads. During a backup the controller runs two: the copy loop (the main thread:
copier.py and everything it calls) and the heartbeat thread started here. What they
share, and how:

  Member.pressure,     written by the heartbeat (every pulse) and by the copy loop
  Member.side_bytes    (every release reply; and the copier clears `pressure` when it
                       acts on it); read by the copy loop. Each is one attribute store,
                       atomic under the GIL; a clear that overtakes a pulse delays the
                       fetch to the next pulse, nothing worse.
  failure              written by the heartbeat (its first failure; sticky), read by
                       the copy loop at every step (check) and by explain.
  Copier.published     replaced whole by the copy loop (a reference swap; a published
                       dict is never changed), read by the heartbeat through
                       `stats_source` to send with every heartbeat.
  Member.client        used by both: a Call holds the connection's lock from send until
                       its reply is read or it is cancelled, so one thread's request
                       and reply never interleave with the other's (control_client.py).

Everything else (the members list, sessions, views) is set before the heartbeat
starts and not changed while it runs; close and abort stop it before anything else.
"""

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TypedDict

from controller.backup.control_client import Call, ControlClient, JsonObject
from controller.backup.local_read import LocalInfo
from controller.errors import SessionAborted, SubsystemError, UsageError
from controller.nbd.connect import NbdAddress

DEFAULT_LEASE_MS = 30000
DEFAULT_DEADLINE_MS = 2000
HEARTBEAT_MAX_S = 0.5

# Control path -> {export: [[offset, length], ...]}: what `open` tracks on each member.
Tracks = dict[str, dict[str, list[list[int]]]]


class ExportEntry(TypedDict):
    """An export as a subsystem's hello lists it."""

    name: str
    size: int


class TimeZero(TypedDict):
    """What freeze_and_thaw measured."""

    time_zero: float  # epoch seconds: the last gate closed
    pause_ms: dict[str, float]  # per export, as each gate measured it
    pause_wall_ms: float  # first freeze sent to last thaw answered, as the controller saw it


@dataclass
class Member:
    """One subsystem of the group."""

    # Set by connect, never changed.
    client: ControlClient
    exports: list[ExportEntry]  # in the subsystem's order
    nbd: NbdAddress
    chunk_size: int
    # Set by open (before the heartbeat starts), never changed.
    session: str = ""
    views: dict[str, str] = field(default_factory=dict)  # export -> its time-zero view's export name
    local: dict[str, LocalInfo] = field(default_factory=dict)  # export -> what reading it here needs
    # Written by the heartbeat thread and by the copy loop (release replies; the copier clears
    # `pressure` when it acts on it), read by the copy loop: atomic attributes (see above).
    pressure: bool = False
    side_bytes: int | None = None  # as the last pulse said; None before the first

    @property
    def where(self) -> str:
        return self.client.path


class ConsistencyGroup:
    def __init__(self, control_paths: list[str], lease_ms: int = DEFAULT_LEASE_MS,
                 deadline_ms: int = DEFAULT_DEADLINE_MS):
        if len(set(control_paths)) != len(control_paths):
            raise UsageError("a control socket is given twice")
        # Set at start, never changed.
        self.control_paths = control_paths
        self.lease_ms = lease_ms
        self.deadline_ms = deadline_ms
        self._stop = threading.Event()
        # Set by connect and open, before the heartbeat starts; read by both threads after.
        self.members: list[Member] = []
        # Heartbeat thread writes, copy loop reads (atomic attribute): its first failure; sticky.
        self.failure: str | None = None
        # Main thread sets it (once, before the copy), heartbeat thread calls it (atomic attribute):
        # returns the copier's published counters, never a dict still changing.
        self.stats_source: Callable[[], Mapping[str, object]] = dict
        # Main thread only.
        self._heartbeat: threading.Thread | None = None

    def connect(self) -> None:
        names: dict[str, str] = {}
        for path in self.control_paths:
            client = ControlClient(path)
            info = client.info
            self.members.append(Member(client, info["exports"], info.get("nbd", {}), info["chunk_size"]))
            for e in info["exports"]:
                if e["name"] in names:
                    raise UsageError(f"export {e['name']!r} is served by both {names[e['name']]} and {path}")
                names[e["name"]] = path
            if not info.get("nbd"):
                raise SubsystemError(f"{path}: the subsystem does not say where it serves NBD")

    def open(self, tracks: Tracks | None = None) -> None:
        """Open a session on every member, on all its exports. With TRACKS (control path ->
        {export: [[offset, length], ...]}): only on the members named there, for the exports
        named there, tracking only those ranges; the other members are let go untouched."""
        if tracks is not None:
            for m in self.members:
                if m.where not in tracks:
                    m.client.close()
            self.members = [m for m in self.members if m.where in tracks]
        for m in self.members:
            if tracks is None:
                reply = m.client.request("open", exports=[e["name"] for e in m.exports], lease_ms=self.lease_ms)
            else:
                reply = m.client.request("open", exports=list(tracks[m.where]), lease_ms=self.lease_ms,
                                         track=tracks[m.where])
            m.session, m.views, m.local = reply["session"], reply["views"], reply.get("local", {})

    def freeze_and_thaw(self) -> TimeZero:
        """Take time zero. Returns time_zero (epoch s), pause_ms (per export, as each gate measured it)
        and pause_wall_ms (first freeze sent to last thaw answered, as the controller saw it)."""
        started = time.monotonic()
        replies = self._all("freeze", deadline_ms=self.deadline_ms)
        thawed = self._all("thaw")
        wall = time.monotonic() - started
        pause: dict[str, float] = {}
        for r in thawed:
            pause.update(r["pause_ms"])
        return {
            "time_zero": max(r["time_zero"] for r in replies),
            "pause_ms": pause,
            "pause_wall_ms": wall * 1000,
        }

    def _all(self, op: str, **fields: object) -> list[JsonObject]:
        """OP on every member at once; if any fails, abort the whole group and raise.

        Whatever interrupts the wait for replies, every call still unanswered is cancelled
        on the way out, which closes its connection: no lock stays held and no reply is
        left to be mistaken for the answer to a later request."""
        sent: list[Call] = []
        replies: list[JsonObject] = []
        errors: list[str] = []
        try:
            for m in self.members:
                try:
                    sent.append(m.client.send(op, **fields))
                except SubsystemError as e:
                    errors.append(str(e))
                    break
            for call in sent:
                try:
                    replies.append(call.reply())
                except SubsystemError as e:
                    errors.append(str(e))
        finally:
            for call in sent:
                call.cancel()
        if errors:
            self.abort(f"{op} failed")
            raise SessionAborted(f"{op} failed, backup abandoned: {errors[0]}")
        return replies

    def start_heartbeat(self) -> None:
        # Often enough to notice side-store pressure promptly, and well inside the lease.
        interval = min(max(self.lease_ms / 4000, 0.05), HEARTBEAT_MAX_S)
        self._heartbeat = threading.Thread(target=self._beat, args=(interval,), name="tzero-heartbeat", daemon=True)
        self._heartbeat.start()

    def _beat(self, interval: float) -> None:
        while not self._stop.wait(interval):
            for m in self.members:
                try:
                    self.note_pulse(m, m.client.request("heartbeat", copier=self.stats_source()))
                except SubsystemError as e:
                    self.failure = self.failure or str(e)
                    return

    def note_pulse(self, m: Member, pulse: JsonObject) -> None:
        m.pressure = pulse["pressure"]
        m.side_bytes = pulse["side_bytes"]

    def check(self) -> None:
        if self.failure:
            raise SessionAborted(f"backup abandoned: {self.failure}")

    def explain(self) -> str | None:
        """Ask every subsystem whether its session is still alive; the first one's
        reason for ending it, or None if all are well (used after a failed view read)."""
        if self.failure:
            return self.failure
        for m in self.members:
            try:
                m.client.request("heartbeat")
            except SubsystemError as e:
                return str(e)
        return None

    def release(self, m: Member, export: str, ranges: list[list[int]]) -> None:
        self.note_pulse(m, m.client.request("release", export=export, ranges=ranges))

    def saved(self, m: Member, export: str, limit: int) -> list[int]:
        chunks: list[int] = m.client.request("saved", export=export, limit=limit)["chunks"]
        return chunks

    def close(self) -> dict[str, JsonObject]:
        """End every session normally; returns the subsystems' final statistics by control path."""
        self._stop_heartbeat()
        stats = {m.where: m.client.request("close")["status"] for m in self.members}
        self._disconnect()
        return stats

    def abort(self, reason: str) -> None:
        """Best effort: tell every subsystem to drop its session (their leases would anyway)."""
        self._stop_heartbeat()
        for m in self.members:
            try:
                m.client.request("abort", reason=reason)
            except SubsystemError:
                pass
        self._disconnect()

    def _stop_heartbeat(self) -> None:
        self._stop.set()
        if self._heartbeat is not None and self._heartbeat is not threading.current_thread():
            self._heartbeat.join()

    def _disconnect(self) -> None:
        for m in self.members:
            m.client.close()
