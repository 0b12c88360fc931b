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
  Member.writes        written by both like side_bytes, read by the copy loop (--rate
                       auto): a tuple replaced whole.
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

Across hosts. Members may be unix sockets or HOST:PORT (TLS with tls_dir); one group may
mix them. No reply is awaited forever: a freeze reply at most the freeze deadline plus
FREEZE_REPLY_GRACE_S (a later one is useless: the member thaws itself at its deadline), a
heartbeat reply at most half the lease, any other reply at most the lease. A member that
does not answer in time fails the backup with a line naming it, and its connection is given
up; the others are aborted at once, and the silent one ends its session by itself when its
lease runs out. So a partition is noticed within the lease on both sides.
"""

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TypedDict

from common.endpoint import is_loopback, is_wildcard
from controller.backup.control_client import Call, ControlClient, JsonObject
from controller.backup.local_read import LocalInfo
from controller.errors import SessionAborted, SubsystemError, UsageError
from controller.nbd.connect import NbdAddress

DEFAULT_LEASE_MS = 30000
DEFAULT_DEADLINE_MS = 2000
HEARTBEAT_MAX_S = 0.5
FREEZE_REPLY_GRACE_S = 2.0  # the network's share of a freeze reply's wait, beyond the deadline
MIN_REPLY_TIMEOUT_S = 1.0  # however short the lease, a reply may take this long

# Control path -> {export: [[offset, length], ...]}: what `open` tracks on each member.
Tracks = dict[str, dict[str, list[list[int]]]]
# Control path -> {export: generation}: the base an incremental counts from, on each member.
Since = dict[str, dict[str, str]]


class ExportEntry(TypedDict):
    """An export as a subsystem's hello lists it."""

    name: str
    size: int


class TimeZero(TypedDict):
    """What freeze_and_thaw measured."""

    time_zero: float  # epoch seconds: the last gate closed
    pause_ms: dict[str, float]  # per export, as each gate measured it
    pause_ms_by_subsystem: dict[str, float]  # per member (its address): its longest gate pause
    pause_wall_ms: float  # first freeze sent to last thaw answered, as the controller saw it


@dataclass(frozen=True)
class Frozen:
    """Every member frozen: when the first freeze went out, and time zero (the last gate closed)."""

    started: float  # monotonic
    time_zero: float  # epoch seconds


@dataclass
class Member:
    """One subsystem of the group."""

    # Set by connect, never changed.
    client: ControlClient
    exports: list[ExportEntry]  # in the subsystem's order
    nbd: NbdAddress  # where to dial its NBD (a wildcard bind resolved to an address to dial)
    chunk_size: int
    tls_dir: str | None = None  # the certificates its NBD connections use, when it requires TLS
    tracking: JsonObject | None = None  # hello's: whether it tracks changes; None from a subsystem that cannot
    # Set by open (before the heartbeat starts), never changed.
    session: str = ""
    views: dict[str, str] = field(default_factory=dict)  # export -> its time-zero view's export name
    local: dict[str, LocalInfo] = field(default_factory=dict)  # export -> what reading it here needs
    generation: str | None = None  # what its exports' change maps count from once the session closes
    changes: dict[str, JsonObject] = field(default_factory=dict)  # export -> {known, reason} for open's since
    # Written by the heartbeat thread and by the copy loop (release replies; the copier clears
    # `pressure` when it acts on it), read by the copy loop: atomic attributes (see above).
    pressure: bool = False
    side_bytes: int | None = None  # as the last pulse said; None before the first
    # The last pulse's (when it came (monotonic), writes the session's exports admitted, chunks saved
    # by copy-before-write); None before the first or from a subsystem that does not say. Replaced
    # whole (--rate auto).
    writes: tuple[float, int, int] | None = None

    @property
    def where(self) -> str:
        return self.client.path


class ConsistencyGroup:
    def __init__(self, control_paths: list[str], lease_ms: int = DEFAULT_LEASE_MS,
                 deadline_ms: int = DEFAULT_DEADLINE_MS, tls_dir: str | None = None):
        if len(set(control_paths)) != len(control_paths):
            raise UsageError("a control socket is given twice")
        # Set at start, never changed.
        self.control_paths = control_paths
        self.lease_ms = lease_ms
        self.deadline_ms = deadline_ms
        self.tls_dir = tls_dir
        self.reply_timeout = max(lease_ms / 1000, MIN_REPLY_TIMEOUT_S)
        self.heartbeat_timeout = max(lease_ms / 2000, MIN_REPLY_TIMEOUT_S)
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
            client = ControlClient(path, self.tls_dir, self.reply_timeout)
            info = client.info
            m = Member(client, info["exports"], self._nbd_address(client, info.get("nbd", {})), info["chunk_size"],
                       self.tls_dir, info.get("tracking"))
            self.members.append(m)
            for e in info["exports"]:
                if e["name"] in names:
                    raise UsageError(f"export {e['name']!r} is served by both {names[e['name']]} and {path}")
                names[e["name"]] = path

    def _nbd_address(self, client: ControlClient, nbd: NbdAddress) -> NbdAddress:
        """Where to dial the NBD server that CLIENT's hello announced as NBD. A wildcard bind
        (every interface) is dialled where the control channel went, or on loopback."""
        if "socket" in nbd:
            return nbd
        if "port" not in nbd:
            raise SubsystemError(f"{client.path}: the subsystem does not say where it serves NBD")
        host = nbd.get("host", "127.0.0.1")
        if is_wildcard(host):
            control_host = client.endpoint.host
            host = control_host if control_host is not None else ("::1" if ":" in host else "127.0.0.1")
        if nbd.get("tls") and self.tls_dir is None:
            raise UsageError(f"{client.path} serves NBD with TLS only: give --tls-certificates DIR")
        if nbd.get("tls") and ":" in host:
            # libnbd 1.14 sends the address as the TLS server name (SNI), which nbdkit's GnuTLS
            # refuses for an IPv6 address; it has no way to name the server otherwise.
            raise UsageError(f"{client.path} serves NBD with TLS on the IPv6 address {host}, which libnbd 1.14 "
                             "cannot reach over TLS: serve it with --bind HOSTNAME (a name that resolves to it)")
        if not nbd.get("tls") and not is_loopback(host):
            raise SubsystemError(f"{client.path} serves NBD in plaintext on {host}, which is not a loopback "
                                 "address: tzero reads views over a network only with TLS")
        return {"host": host, "port": nbd["port"], "tls": bool(nbd.get("tls"))}

    def open(self, tracks: Tracks | None = None, since: Since | None = None, keep: Tracks | None = None) -> None:
        """Open a session on every member, on all its exports. With TRACKS (control path ->
        {export: [[offset, length], ...]}): only on the members named there, for the exports
        named there, tracking only those ranges; the other members are let go untouched.
        With SINCE (control path -> {export: generation}), the sessions count from that base:
        each member's `changes` says whether it knows what changed since (unknown_changes), and
        at freeze keeps tracked only the changed chunks and KEEP's ranges."""
        if tracks is not None:
            for m in self.members:
                if m.where not in tracks:
                    m.client.close()
            self.members = [m for m in self.members if m.where in tracks]
        for m in self.members:
            fields: dict[str, object] = {"lease_ms": self.lease_ms}
            if tracks is None:
                fields["exports"] = [e["name"] for e in m.exports]
            else:
                fields.update(exports=list(tracks[m.where]), track=tracks[m.where])
            if since is not None:
                fields["since"] = since.get(m.where, {})
                fields["keep"] = (keep or {}).get(m.where, {})
            reply = m.client.request("open", None, **fields)
            m.session, m.views, m.local = reply["session"], reply["views"], reply.get("local", {})
            m.generation, m.changes = reply.get("generation"), reply.get("changes", {})

    def unknown_changes(self, since: Since) -> str | None:
        """Why some export's changes since its SINCE base are not known (before open: a member that
        does not track changes; after open: what its `changes` said), or None if all are known."""
        for m in self.members:
            for export in since.get(m.where, {}):
                if m.tracking is None:
                    return f"{m.where} does not track changes (an older tzero serve?)"
                if not m.tracking.get("enabled"):
                    return f"{m.where} does not track changes (it runs with --no-tracking)"
                known = m.changes.get(export)
                if known is not None and not known["known"]:
                    return f"export {export!r} on {m.where}: {known['reason']}"
        return None

    def changed_chunks(self, m: Member, export: str) -> bytearray:
        """EXPORT's chunks changed since the base open named (one byte each, 1: changed), paged in."""
        size = next(e["size"] for e in m.exports if e["name"] == export)
        changed = bytearray(-(-size // m.chunk_size))
        first: int | None = 0
        while first is not None:
            reply = m.client.request("changes", export=export, first=first)
            for start, count in reply["ranges"]:
                changed[start:start + count] = b"\x01" * count
            first = reply["next"]
        return changed

    def end_sessions(self, reason: str) -> None:
        """Abort every member's session before its freeze and keep the connections, to open again."""
        for m in self.members:
            m.client.request("abort", reason=reason)

    def freeze_and_thaw(self) -> TimeZero:
        """Take time zero: freeze() then thaw(). Returns time_zero (epoch s), pause_ms (per
        export, as each gate measured it), pause_ms_by_subsystem and pause_wall_ms (first
        freeze sent to last thaw answered, as the controller saw it)."""
        return self.thaw(self.freeze())

    def freeze(self) -> Frozen:
        """Freeze every member (all or none: SessionAborted, every session aborted, if one fails)."""
        started = time.monotonic()
        replies = self._all("freeze", self.deadline_ms / 1000 + FREEZE_REPLY_GRACE_S, deadline_ms=self.deadline_ms)
        return Frozen(started, max(r["time_zero"] for r in replies))

    def thaw(self, frozen: Frozen) -> TimeZero:
        """Thaw every member frozen by freeze() (SessionAborted, every session aborted, if one fails:
        a member that thawed by itself at its deadline has aborted its session)."""
        thawed = self._all("thaw", self.reply_timeout)
        wall = time.monotonic() - frozen.started
        pause: dict[str, float] = {}
        by_member: dict[str, float] = {}
        for m, r in zip(self.members, thawed, strict=True):
            pause.update(r["pause_ms"])
            by_member[m.where] = max(r["pause_ms"].values(), default=0.0)
        return {
            "time_zero": frozen.time_zero,
            "pause_ms": pause,
            "pause_ms_by_subsystem": by_member,
            "pause_wall_ms": wall * 1000,
        }

    def _all(self, op: str, timeout: float, **fields: object) -> list[JsonObject]:
        """OP on every member at once, every reply within TIMEOUT seconds of sending; if any
        fails, abort the whole group and raise.

        Whatever interrupts the wait for replies, every call still unanswered is cancelled
        on the way out, which closes its connection: no lock stays held and no reply is
        left to be mistaken for the answer to a later request."""
        replies, errors = self._exchange(op, timeout, fields)
        if errors:
            self.abort(f"{op} failed")
            raise SessionAborted(f"{op} failed, backup abandoned: {errors[0]}")
        return replies

    def _exchange(self, op: str, timeout: float, fields: dict[str, object],
                  members: list[Member] | None = None) -> tuple[list[JsonObject], list[str]]:
        """Send OP to every one of MEMBERS (default: all) before reading any reply, then read the
        replies, all within TIMEOUT seconds of the first send. Returns (replies, errors)."""
        sent: list[Call] = []
        replies: list[JsonObject] = []
        errors: list[str] = []
        deadline = time.monotonic() + timeout
        try:
            for m in self.members if members is None else members:
                try:
                    sent.append(m.client.send(op, **fields))
                except SubsystemError as e:
                    errors.append(str(e))
                    if members is None:
                        break
            for call in sent:
                try:
                    replies.append(call.reply(max(deadline - time.monotonic(), 0.001)))
                except SubsystemError as e:
                    errors.append(str(e))
        finally:
            for call in sent:
                call.cancel()
        return replies, errors

    def start_heartbeat(self) -> None:
        # Often enough to notice side-store pressure promptly, and well inside the lease.
        interval = min(max(self.lease_ms / 4000, 0.05), HEARTBEAT_MAX_S)
        self._heartbeat = threading.Thread(target=self._beat, args=(interval,), name="tzero-heartbeat", daemon=True)
        self._heartbeat.start()

    def _beat(self, interval: float) -> None:
        while not self._stop.wait(interval):
            for m in self.members:
                try:
                    pulse = m.client.request("heartbeat", self.heartbeat_timeout, copier=self.stats_source())
                    self.note_pulse(m, pulse)
                except SubsystemError as e:
                    self.failure = self.failure or str(e)
                    return

    def note_pulse(self, m: Member, pulse: JsonObject) -> None:
        m.pressure = pulse["pressure"]
        m.side_bytes = pulse["side_bytes"]
        writes = pulse.get("writes")
        m.writes = (time.monotonic(), writes, pulse["chunks_cow"]) if isinstance(writes, int) else None

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
                m.client.request("heartbeat", self.heartbeat_timeout)
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
        """Best effort: tell every subsystem to drop its session (their leases would anyway),
        all at once, so one that cannot be reached delays the others by nothing and the
        whole abort by at most the heartbeat timeout."""
        self._stop_heartbeat()
        self._exchange("abort", self.heartbeat_timeout, {"reason": reason}, list(self.members))
        self._disconnect()

    def _stop_heartbeat(self) -> None:
        self._stop.set()
        if self._heartbeat is not None and self._heartbeat is not threading.current_thread():
            self._heartbeat.join()

    def _disconnect(self) -> None:
        for m in self.members:
            m.client.close()
