"""A one-line progress bar on stderr, shown only on a terminal."""

import sys
import time

_REFRESH_S = 0.2


class Progress:
    def __init__(self, total_bytes: int, enabled: bool):
        self.total = max(total_bytes, 1)
        self.enabled = enabled and sys.stderr.isatty()
        self.started = time.monotonic()
        self._shown = 0.0

    def __call__(self, done: int) -> None:
        now = time.monotonic()
        if not self.enabled or (now - self._shown < _REFRESH_S and done < self.total):
            return
        self._shown = now
        fraction = min(done / self.total, 1.0)
        rate = done / max(now - self.started, 1e-6) / (1 << 20)
        bar = "#" * int(fraction * 30)
        sys.stderr.write(f"\r[{bar:<30}] {fraction * 100:5.1f}%  {done >> 20}/{self.total >> 20} MiB"
                         f"  {rate:7.1f} MiB/s")
        sys.stderr.flush()

    def finish(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")
