"""The write gate of one export: freeze stops admitting mutations, thaw admits them again.

Reads never pass through the gate. A mutation that arrives while frozen waits,
but never past the freeze deadline: whoever sees the deadline pass first (the
waiting writer or the watchdog) thaws the gate and reports the expiry, so a
lost controller can hold writes for at most the deadline.

A clean stop seals the gate: frozen for good, with no deadline, once the mutations in
flight have drained; a mutation that arrives later waits until the process ends, so it is
never applied (nor acknowledged) after the change maps were saved.

Lock: `_lock` (shared by `_cond`) guards `_frozen`, `_sealed`, `_inflight`, `_deadline`,
`_closed_at` and the count behind `writes`. Every application write passes here twice, so
the open gate costs one plain lock round trip each way: the condition is only waited on or
notified while frozen.
"""

import threading
import time
from collections.abc import Callable


class FreezeTimeout(Exception):
    """in-flight writes did not drain before the freeze deadline"""


class WriteGate:
    def __init__(self, on_expire: Callable[[], None] | None = None) -> None:
        # set at start-up, never changed
        self.on_expire = on_expire  # called once, without the lock held, when a freeze outlives its deadline
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        # guarded by _lock (`frozen` reads _frozen without it: one atomic attribute read)
        self._frozen = False
        self._sealed = False
        self._inflight = 0
        self._deadline = 0.0
        self._closed_at = 0.0
        # Set by the session that opens (None when none is open), read by enter under _lock:
        # the shared concordance's count of writes admitted (chunkmap.writes_word), which a
        # controller pacing with --rate auto reads to yield to busy writers.
        self.writes: memoryview | None = None

    def enter(self) -> None:
        """Admit one mutation; waits while frozen, at most until the freeze deadline."""
        with self._lock:
            if not self._frozen:
                self._inflight += 1
                if self.writes is not None:
                    self.writes[0] += 1
                return
        self._enter_frozen()

    def _enter_frozen(self) -> None:
        expired = False
        with self._cond:
            while self._frozen:
                remaining = self._deadline - time.monotonic()
                if remaining <= 0:
                    expired = self._open_locked()
                    break
                self._cond.wait(None if self._sealed else remaining)  # sealed: until the process ends
            self._inflight += 1
            if self.writes is not None:
                self.writes[0] += 1
        if expired and self.on_expire:
            self.on_expire()

    def leave(self) -> None:
        with self._lock:
            self._inflight -= 1
            assert self._inflight >= 0, "leave() pairs with enter()"
            if self._frozen and not self._inflight:
                self._cond.notify_all()  # the freeze waits for the last write in flight

    def freeze(self, deadline_s: float) -> float:
        """Stop admitting mutations and wait for the in-flight ones to finish.

        Returns the monotonic time the gate closed. Raises FreezeTimeout (gate
        open again) if they do not drain within DEADLINE_S.
        """
        with self._cond:
            if self._sealed:
                raise FreezeTimeout("the subsystem is stopping")
            assert not self._frozen, "the session protocol freezes once"
            self._frozen = True
            self._closed_at = time.monotonic()
            self._deadline = self._closed_at + deadline_s
            while self._inflight:
                remaining = self._deadline - time.monotonic()
                if remaining <= 0:
                    self._open_locked()
                    raise FreezeTimeout(f"{self._inflight} writes still in flight after {deadline_s:.3f} s")
                self._cond.wait(remaining)
            return self._closed_at

    def thaw(self) -> float:
        """Admit mutations again; returns how long the gate was closed (seconds), 0 if it was open."""
        with self._cond:
            if not self._frozen:
                return 0.0
            self._open_locked()
            return time.monotonic() - self._closed_at

    def seal(self, wait_s: float) -> bool:
        """Close the gate for good (a clean stop): no deadline, no thaw. Waits up to WAIT_S for
        the mutations in flight; returns whether they all drained."""
        with self._cond:
            self._sealed = self._frozen = True
            self._deadline = float("inf")
            end = time.monotonic() + wait_s
            while self._inflight and (remaining := end - time.monotonic()) > 0:
                self._cond.wait(remaining)
            return not self._inflight

    def expire_if_due(self) -> None:
        """The watchdog's check: thaw a freeze that outlived its deadline."""
        with self._cond:
            expired = self._frozen and time.monotonic() >= self._deadline and self._open_locked()
        if expired and self.on_expire:
            self.on_expire()

    @property
    def frozen(self) -> bool:
        return self._frozen

    def _open_locked(self) -> bool:
        if self._sealed:
            return False
        self._frozen = False
        self._cond.notify_all()
        return True
