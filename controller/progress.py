"""What a long command knows about why it is slow, for the progress display (cli/progress.py).

A copy waits on something most of the time: its reads, its writes, a side store. The
commands time what they wait on with a WaitClock; the display asks, each time it draws,
which share of the time since it last asked went to each wait, and says the one that
dominates. Everything here is used by one thread: the command's copy loop, which also
draws the progress.
"""

import time
from collections.abc import Callable

# A wait that took at least this share of the time since the display last drew is "why it is slow".
DOMINANT_SHARE = 0.5


class WaitClock:
    """Seconds spent waiting on one thing; share() is the fraction of wall time since the
    previous share() (or the clock's start) that went to it."""

    def __init__(self, what: str) -> None:
        self.what = what  # says what was waited on, e.g. "waiting on the output writes"
        self.seconds = 0.0
        self._seen_seconds = 0.0
        self._seen_at = time.monotonic()

    def share(self) -> float:
        now = time.monotonic()
        elapsed, waited = now - self._seen_at, self.seconds - self._seen_seconds
        self._seen_at, self._seen_seconds = now, self.seconds
        return min(waited / elapsed, 1.0) if elapsed > 0 else 0.0

    def reason(self) -> str | None:
        """WHAT with its share, when it dominated the time since the last call; else None."""
        share = self.share()
        return f"{self.what} ({share:.0%} of the time)" if share >= DOMINANT_SHARE else None


def reasons(*sources: Callable[[], str | None]) -> Callable[[], str | None]:
    """One why-slow callback from several: the reasons that hold now, joined with '; '."""

    def why() -> str | None:
        said = [r for r in (s() for s in sources) if r]
        return "; ".join(said) or None

    return why
