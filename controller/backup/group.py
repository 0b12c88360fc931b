"""The consistency group: one backup session on every subsystem, frozen and thawed together.

Freeze is all or none: a request goes to every subsystem before any reply is
awaited; if one fails, every session is aborted (which thaws its gates) and the
backup fails. Time zero is the moment the last gate closed, so every export's
content is the content it held while all gates were closed together.

A heartbeat thread renews every lease and picks up side-store pressure and
aborts; the copier reads `failure` and `pressure` between steps.
"""

import threading
import time
from dataclasses import dataclass, field

from controller.backup.control_client import ControlClient
from controller.errors import SessionAborted, SubsystemError, UsageError

DEFAULT_LEASE_MS = 30000
DEFAULT_DEADLINE_MS = 2000
HEARTBEAT_MAX_S = 0.5


@dataclass
class Member:
    """One subsystem of the group."""

    client: ControlClient
    exports: list[dict]  # [{"name", "size"}], in the subsystem's order
    nbd: dict
    chunk_size: int
    session: str = ""
    views: dict = field(default_factory=dict)
    local: dict = field(default_factory=dict)  # export -> what reading it here needs (local_read.py)
    pressure: bool = False  # written by the heartbeat thread and by release replies
    side_bytes: int | None = None  # as the last pulse said; None before the first

    @property
    def where(self) -> str:
        return self.client.path


class ConsistencyGroup:
    def __init__(self, control_paths: list[str], lease_ms: int = DEFAULT_LEASE_MS,
                 deadline_ms: int = DEFAULT_DEADLINE_MS):
        if len(set(control_paths)) != len(control_paths):
            raise UsageError("a control socket is given twice")
        self.control_paths = control_paths
        self.lease_ms = lease_ms
        self.deadline_ms = deadline_ms
        self.members: list[Member] = []
        self.failure: str | None = None  # first failure seen by the heartbeat thread; sticky
        self.stats_source = dict  # returns the copier's published counters (never a dict still changing)
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None

    def connect(self) -> None:
        names = {}
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

    def open(self, tracks: dict | None = None) -> None:
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

    def freeze_and_thaw(self) -> dict:
        """Take time zero. Returns time_zero (epoch s), pause_ms (per export, as each gate measured it)
        and pause_wall_ms (first freeze sent to last thaw answered, as the controller saw it)."""
        started = time.monotonic()
        replies = self._all("freeze", deadline_ms=self.deadline_ms)
        thawed = self._all("thaw")
        wall = time.monotonic() - started
        pause = {}
        for r in thawed:
            pause.update(r["pause_ms"])
        return {
            "time_zero": max(r["time_zero"] for r in replies),
            "pause_ms": pause,
            "pause_wall_ms": wall * 1000,
        }

    def _all(self, op: str, **fields) -> list[dict]:
        """OP on every member at once; if any fails, abort the whole group and raise.

        Whatever interrupts the wait for replies, every call still unanswered is cancelled
        on the way out, which closes its connection: no lock stays held and no reply is
        left to be mistaken for the answer to a later request."""
        sent, replies, errors = [], [], []
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

    def note_pulse(self, m: Member, pulse: dict) -> None:
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
        return m.client.request("saved", export=export, limit=limit)["chunks"]

    def close(self) -> dict:
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
