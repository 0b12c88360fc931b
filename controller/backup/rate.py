"""--rate: how fast the copier may read the time-zero views (max, a fixed rate, or auto).

What is paced. The bytes the copier reads from the views in stream order (locally or over
NBD, all-zero chunks included: they are read like any other), counted when a read is
issued. Time zero (freeze, concordance, thaw) is never paced. Saved chunks fetched under
side-store pressure (pressure.py) are read at once whatever the rate and are not counted:
the side store must never overflow because of a rate, and counting them would let a
busy writer starve the in-order copy for as long as it writes (the same choice as QEMU's
block-copy, whose copy-before-write requests bypass the job's `speed`).

A fixed rate N (bytes per second) is a token bucket that starts full, holding a tenth of a
second's worth (SLICE_S: QEMU's job rate limit works in slices of the same length), but
at least one request (the copier reads up to 1 MiB at once). A read may start while the
bucket holds anything, and its size is taken even if that leaves it in debt, so over any
stretch of time T the copier reads at most N x T + one slice + one request: at the start
a burst of one slice, then N per second. QEMU's block job `speed` means the same, bytes per
second of the disk copied; vzdump's `bwlimit` is the same figure in KiB/s (bwlimit 204800
is --rate 200M).

auto gives the applications' writes priority. Each subsystem counts the mutations it
admits (the write gate, nbdplugin/gate.py): a local controller reads that count from the
shared concordance's header, a remote one from every pulse (heartbeat and release
replies, docs/control-protocol.md), which also says how many chunks copy-before-write
saved. While some subsystem of the backup admits at least AUTO_BUSY_WRITES_PER_S writes a
second over the last AUTO_WINDOW_S, the copier yields: it reads at AUTO_FLOOR, the floor
that keeps the backup going however long the writers write. But not while those writes
save chunks (one in AUTO_WRITES_PER_SAVE or more, or not known before the first pulse,
which a heartbeat or the first release brings): then each chunk
copied sooner is a copy-before-write the applications no longer pay, and a slower copy
would make them save nearly every chunk and fill the side store (bench/rate.py measured
up to 4.8 times the saves of max under fio over a whole disk when auto yielded to any busy
writer). Otherwise it reads at full speed.
Pressure still wins, as above.

Pacer is used by the copy loop only (copier.py), and reads nothing it does not own but the
write counts (a shared mapping, or attributes the heartbeat thread replaces whole).
"""

import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from common import units

if TYPE_CHECKING:
    from controller.backup.group import Member
    from controller.backup.local_read import LocalRead
    from controller.backup.view_reader import ViewReader

SLICE_S = 0.1  # the burst a fixed rate allows: this long at the rate
MIN_RATE = 1 << 20  # --rate below 1 MiB/s is refused (1 GiB would take over 17 minutes at 1 MiB/s already)
MIN_BURST = 1 << 20  # the bucket holds at least one request, so a read never waits for tokens it cannot hold
AUTO_FLOOR = 64 << 20  # auto's rate while writers are busy
AUTO_WINDOW_S = 0.5  # auto looks at the writes of this long: at least a heartbeat interval, so pulses show
AUTO_BUSY_WRITES_PER_S = 200  # auto yields from this many writes a second on one subsystem
AUTO_WRITES_PER_SAVE = 16  # ... unless one write in this many (or more) saves a chunk
SAMPLE_S = 0.01  # auto reads the write counts at most this often
MIN_SPAN_S = 0.1  # auto judges a rate over at least this long
POLL_S = 0.05  # a paced copy loop wakes at least this often (to relieve pressure, to notice a failure)

Clock = Callable[[], float]
WriteCount = Callable[[], "tuple[float, int] | None"]  # (when, writes admitted so far), or None: not known
PulseCount = Callable[[], "tuple[float, int, int] | None"]  # the last pulse: (when, writes, chunks saved)


@dataclass(frozen=True)
class Rate:
    """--rate as given: "max", "auto", or a fixed number of bytes per second."""

    mode: str  # "max", "auto" or "fixed"
    bytes_per_s: int = 0  # "fixed" only

    def __str__(self) -> str:
        return units.human_rate(self.bytes_per_s) if self.mode == "fixed" else self.mode


MAX = Rate("max")
RATE_GRAMMAR = "max, auto, or bytes per second as a size (200M, 1.5GiB; at least 1M)"


def parse_rate(text: str) -> Rate:
    """--rate's value; ValueError naming TEXT if it is none of max, auto, a size of at least MIN_RATE."""
    word = text.strip().lower()
    if word in ("max", "auto"):
        return Rate(word)
    size_text = word[:-2] if word.endswith("/s") else word  # 200M/s is read as 200M
    try:
        n = units.parse_size(size_text, "--rate")
    except ValueError:
        raise ValueError(f"--rate: {text!r} is not a rate ({RATE_GRAMMAR})") from None
    if n < MIN_RATE:
        raise ValueError(f"--rate: {text!r} is below the least rate, {units.human_rate(MIN_RATE)}")
    return Rate("fixed", n)


class TokenBucket:
    """Bytes per second with a burst: RATE (None: unlimited), holding at most one slice or one request."""

    def __init__(self, rate: int | None, clock: Clock):
        self.clock = clock
        self.rate = rate
        self.tokens = float(self.capacity)  # full at the start: the first reads go at once
        self._at = clock()

    @property
    def capacity(self) -> int:
        return 0 if self.rate is None else max(int(self.rate * SLICE_S), MIN_BURST)

    def set_rate(self, rate: int | None) -> None:
        """Change the rate from now on (tokens earned until now at the old one)."""
        self._refill()
        if rate != self.rate:
            was, self.rate = self.rate, rate
            # From unlimited the bucket starts full, as at the start: a read judged ready under
            # the old rate is never refused under the new one.
            self.tokens = float(self.capacity) if was is None else min(self.tokens, float(self.capacity))

    def _refill(self) -> None:
        now = self.clock()
        if self.rate is not None:
            self.tokens = min(float(self.capacity), self.tokens + (now - self._at) * self.rate)
        self._at = now

    def take(self, n: int) -> bool:
        """Take N bytes' worth if the bucket holds anything (it may go into debt); False: not now."""
        if self.rate is None:
            return True
        self._refill()
        if self.tokens <= 0:
            return False
        self.tokens -= n
        return True

    def delay(self) -> float:
        """Seconds until take() may pass again (0: now)."""
        if self.rate is None:
            return 0.0
        self._refill()
        return 0.0 if self.tokens > 0 else (1 - self.tokens) / self.rate


class WriteWatch:
    """Whether the copy should yield to the applications' writes. SOURCES, one per subsystem:
    its write count (when, mutations admitted so far) and its last pulse (when, mutations
    admitted, chunks saved by copy-before-write), each None when not known. Yield while some
    subsystem admits at least AUTO_BUSY_WRITES_PER_S over the last AUTO_WINDOW_S and no
    subsystem's writes are saving chunks (at least one save per AUTO_WRITES_PER_SAVE writes
    over the pulses of the last two windows, or not known yet: before its first pulse)."""

    def __init__(self, sources: "list[tuple[WriteCount, PulseCount]]", clock: Clock):
        self.sources = sources
        self.clock = clock
        # Both count from the session's open (the header's word starts at zero, so do a pulse's
        # counts): the copy's start is a sample of each, so one look or one pulse tells a rate.
        start = clock()
        self._counts: list[deque[tuple[float, int]]] = [deque([(start, 0)]) for _ in sources]
        self._pulses: list[deque[tuple[float, int, int]]] = [deque([(start, 0, 0)]) for _ in sources]
        self._sampled_at = float("-inf")
        self._yield = False

    def should_yield(self) -> bool:
        now = self.clock()
        if now - self._sampled_at < SAMPLE_S:
            return self._yield
        self._sampled_at = now
        busy = saving = False
        for (count, pulse), counts, pulses in zip(self.sources, self._counts, self._pulses, strict=True):
            seen = count()
            if seen is not None:
                (t0, n0), (t1, n1) = _window(counts, seen, now - AUTO_WINDOW_S)
                # Over a short span (the copy's first samples) a few writes are no rate yet.
                busy = busy or n1 - n0 >= AUTO_BUSY_WRITES_PER_S * max(t1 - t0, MIN_SPAN_S)
            heard = pulse()
            if heard is None:
                saving = True  # a subsystem that does not say: never slow its copy down
                continue
            # Pulses come every quarter lease, at most 0.5 s apart: two windows hold two of them.
            first, last = _window(pulses, heard, now - 2 * AUTO_WINDOW_S)
            saves, writes = last[2] - first[2], last[1] - first[1]
            saving = saving or first is last or (saves > 0 and saves * AUTO_WRITES_PER_SAVE >= writes)
        self._yield = busy and not saving
        return self._yield


def _window(samples: "deque[Any]", seen: "Any", start: float) -> "tuple[Any, Any]":
    """Add SEEN (a tuple whose first item is when) to SAMPLES unless it is the last one again (a
    pulse not renewed yet); keep the last sample at or before START and all after it. Returns
    the first and last kept."""
    if not samples or seen[0] != samples[-1][0]:
        samples.append(seen)
    while len(samples) > 1 and samples[1][0] <= start:
        samples.popleft()
    return samples[0], samples[-1]


class Pacer:
    """The copy loop's pacing: admit(n) before each read in stream order (the scheduler asks),
    ready() while the head of the stream waits for its read. RATE as parsed; WATCH: the write
    counts (auto only)."""

    def __init__(self, rate: Rate, watch: WriteWatch | None = None, clock: Clock = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep):
        assert rate.mode != "auto" or watch is not None, "auto needs the write counts"
        # Set at start, never changed.
        self.rate = rate
        self.watch = watch if rate.mode == "auto" else None
        self.sleep = sleep
        # Copy loop only.
        self.bucket = TokenBucket(rate.bytes_per_s if rate.mode == "fixed" else None, clock)
        self.clock = clock
        # Statistics (copy loop only).
        self.waited_s = 0.0  # time the copy loop slept for the rate
        self.yielded = 0  # times auto turned to its floor

    def _follow_writes(self) -> None:
        if self.watch is not None:
            yielding = self.watch.should_yield()
            if yielding and self.bucket.rate is None:
                self.yielded += 1
            self.bucket.set_rate(AUTO_FLOOR if yielding else None)

    def admit(self, n: int) -> bool:
        """Whether a read of N bytes may be issued now (then it is counted)."""
        self._follow_writes()
        return self.bucket.take(n)

    def ready(self) -> bool:
        """Whether a read may be issued now; if not, sleep a while (at most POLL_S) and say False."""
        self._follow_writes()
        delay = self.bucket.delay()
        if delay <= 0:
            return True
        pause = min(delay, POLL_S)
        started = self.clock()
        self.sleep(pause)
        self.waited_s += self.clock() - started
        return False


def pacer_for(rate: Rate, readers: "Mapping[str, ViewReader]", owner: "Mapping[str, Member]") -> Pacer:
    """The copy's Pacer for RATE. For auto, one write count per subsystem: the sum of its exports'
    concordance headers when every one of them is read here (fresh at every look), else what its
    pulses say (as fresh as the last heartbeat or release)."""
    if rate.mode != "auto":
        return Pacer(rate)
    by_member: dict[int, list[str]] = {}
    for export in readers:
        by_member.setdefault(id(owner[export]), []).append(export)
    sources: list[tuple[WriteCount, PulseCount]] = []
    for exports in by_member.values():
        local = [r.local for e in exports if (r := readers[e]).local is not None]
        m = owner[exports[0]]
        sources.append((_mapped(local) if len(local) == len(exports) else _pulsed(m), _pulse(m)))
    return Pacer(rate, WriteWatch(sources, time.monotonic))


def _mapped(local: "list[LocalRead]") -> WriteCount:
    def count() -> tuple[float, int]:
        return time.monotonic(), sum(r.writes_admitted() for r in local)
    return count


def _pulsed(member: "Member") -> WriteCount:
    def count() -> tuple[float, int] | None:
        pulse = member.writes
        return None if pulse is None else (pulse[0], pulse[1])
    return count


def _pulse(member: "Member") -> PulseCount:
    def pulse() -> tuple[float, int, int] | None:
        return member.writes
    return pulse
