"""Progress of a long command (backup, restore, verify; consolidate will use it the same way):
a bar on a terminal, plain lines or JSON lines elsewhere, and JSON lines to a file descriptor.

A command makes one Progress(args, command, total), calls update(done, dataset) as bytes
go by (cheap: it draws only when due), sets why_slow to a callback that says what the copy
waits on (controller/progress.py), and calls finish() once everything is done. Every
display shows the same figures: percent, bytes in human units, a smoothed rate, the time
left at that rate, the dataset being copied, and why it is slow when it is.

--progress (default auto):
    auto    on a terminal (standard error), a bar once the command has run 0.5 s; elsewhere
            a plain line every 10 s once it has run 10 s: a command that ends sooner says
            nothing, so short runs and scripts stay quiet
    always  the bar from the start, even when standard error is not a terminal
    plain   a plain line every 10 s from the start
    json    a JSON line every second on standard error (fields: docs/json.md)
    never   nothing (also -q and --no-progress)
--progress-fd FD adds JSON lines on file descriptor FD, whatever --progress says, like
nbdcopy's --progress=FD. --progress-interval changes the time between lines (and how long
auto waits before it shows anything). Whatever
shows progress from the start shows its first line at once; everything that showed any
line shows a last one at 100 %.
"""

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Callable
from typing import IO, TypedDict

from tqdm import tqdm

from common.units import human_duration, human_rate, human_size
from controller.cli.args import TzeroParser, integer, parse_duration, setting
from controller.errors import UsageError

MODES = ("auto", "always", "plain", "json", "never")
BAR_REFRESH_S = 0.2
AUTO_BAR_DELAY_S = 0.5
PLAIN_INTERVAL_S = 10.0
JSON_INTERVAL_S = 1.0
RATE_TIME_CONSTANT_S = 5.0  # the smoothed rate follows a change in speed within a few of these
RATE_SAMPLE_S = 0.5


class Report(TypedDict):
    """One JSON progress line (docs/json.md)."""

    command: str
    done_bytes: int
    total_bytes: int
    percent: float
    rate_bytes_per_s: int
    eta_s: float | None
    elapsed_s: float
    dataset: str | None
    slow: str | None


def add_options(p: TzeroParser) -> None:
    setting(p, "--progress", key="progress", default="auto", choices=MODES,
            help="auto: a bar on a terminal, a plain line every 10 s elsewhere; always: the bar; "
                 "plain: plain lines; json: JSON lines on standard error; never: none")
    p.add_argument("--no-progress", dest="progress", action="store_const", const="never",
                   help="the same as --progress never")
    p.add_argument("--progress-fd", type=integer, metavar="FD",
                   help="also write progress as JSON lines to file descriptor FD (as nbdcopy --progress=FD)")
    p.add_argument("--progress-interval", metavar="DURATION",
                   help="time between plain or JSON lines (default 10s for plain lines, 1s for JSON)")


class Meter:
    """A smoothed rate: an exponential moving average of the rate between samples at least
    RATE_SAMPLE_S apart, with time constant RATE_TIME_CONSTANT_S (until the first sample,
    the average since the start)."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.rate = 0.0
        self._at, self._done, self._sampled = self.started, 0, False

    def sample(self, done: int, now: float) -> float:
        dt = now - self._at
        if dt >= RATE_SAMPLE_S:
            current = (done - self._done) / dt
            if self._sampled:
                weight = 1 - math.exp(-dt / RATE_TIME_CONSTANT_S)
                self.rate += weight * (current - self.rate)
            else:
                self.rate, self._sampled = current, True
            self._at, self._done = now, done
        elif not self._sampled and now > self.started:
            self.rate = done / (now - self.started)
        return self.rate


class Progress:
    def __init__(self, args: argparse.Namespace, command: str, total: int) -> None:
        # Set at start, never changed. The command's copy loop alone calls update and finish.
        self.command = command
        self.total = total
        mode = "never" if getattr(args, "quiet", False) else (args.progress or "auto")
        if mode not in MODES:
            raise UsageError(f"--progress {mode!r}: choose one of {', '.join(MODES)}")
        interval = parse_duration(args.progress_interval, "--progress-interval") / 1000 \
            if args.progress_interval else None
        delay = 0.0
        if mode == "auto":
            mode = "always" if sys.stderr.isatty() else "plain"
            delay = interval if interval is not None else AUTO_BAR_DELAY_S if mode == "always" else PLAIN_INTERVAL_S
        self.mode = mode
        self.line_interval = interval or (JSON_INTERVAL_S if mode == "json" else PLAIN_INTERVAL_S)
        self.fd_interval = interval or JSON_INTERVAL_S
        self.fd_file = _open_fd(args.progress_fd) if args.progress_fd is not None else None
        self.why_slow: Callable[[], str | None] = lambda: None
        # Copy loop only.
        self.meter = Meter()
        self.done = 0
        self.dataset: str | None = None
        self.slow: str | None = None
        self._due = {"display": self.meter.started + delay, "fd": 0.0}
        self._slow_due = 0.0
        self._shown = False  # anything displayed yet (the fd aside)
        self._bar: tqdm | None = None

    def update(self, done: int, dataset: str | None = None) -> None:
        """DONE bytes of the total are through; DATASET is the one being worked on."""
        self.done = done
        if dataset is not None:
            self.dataset = dataset
        now = time.monotonic()
        if now >= min(self._due.values()):
            self._draw(now, final=False)

    def finish(self) -> None:
        """Everything is done: the last line says 100 %."""
        self.done = self.total
        self._draw(time.monotonic(), final=True)

    def close(self) -> None:
        """Close the bar and the file descriptor, after finish() or a failure (before its message);
        idempotent: nothing is displayed after it."""
        self.mode = "never"
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self.fd_file is not None:
            _close(self.fd_file)
            self.fd_file = None

    def _draw(self, now: float, final: bool) -> None:
        show = now >= self._due["display"] or (final and self._shown)
        write = self.fd_file is not None and (final or now >= self._due["fd"])
        if self.fd_file is None:
            self._due["fd"] = math.inf
        if self.mode == "never":
            self._due["display"] = math.inf
        if not (show or write):
            return
        self.meter.sample(self.done, now)
        if final:
            self.slow = None
        elif now >= self._slow_due:  # the waits' shares are measured over at least RATE_SAMPLE_S
            self.slow = self.why_slow()
            self._slow_due = now + RATE_SAMPLE_S
        if show:
            self._display(final)
            self._due["display"] = now + (BAR_REFRESH_S if self.mode == "always" else self.line_interval)
        if write:
            self._write_fd(json.dumps(self.report()) + "\n")
            self._due["fd"] = now + self.fd_interval

    def _display(self, final: bool) -> None:
        if self.mode == "never":
            return
        self._shown = True
        if self.mode == "always" and self._bar is None:
            # A terminal that says it is 0 columns wide (a pty nobody sized) would make tqdm drop
            # the bar and our format: assume 100 columns there.
            width = _columns()
            self._bar = tqdm(total=self.total, file=sys.stderr, desc=f"tzero {self.command}", leave=True,
                             dynamic_ncols=width is None, ncols=width,
                             bar_format="{desc} {percentage:3.0f}% |{bar}| {postfix}", mininterval=0)
        if self._bar is not None:
            self._bar.n = self.done
            self._bar.set_postfix_str(self.text(bar=True), refresh=False)
            self._bar.refresh()
        elif self.mode == "plain":
            print(f"tzero {self.command}: {self.text(bar=False)}", file=sys.stderr, flush=True)
        elif self.mode == "json":
            print(json.dumps(self.report()), file=sys.stderr, flush=True)

    def percent(self) -> float:
        return round(100.0 * self.done / self.total, 1) if self.total else 100.0

    def eta(self) -> float | None:
        rate = self.meter.rate
        return round((self.total - self.done) / rate, 1) if rate > 0 else None

    def text(self, bar: bool) -> str:
        """The figures as a person reads them: '45% 1.2 GiB of 2.7 GiB, 310 MiB/s, 5 s left, vm1'."""
        eta = self.eta()
        parts = [("" if bar else f"{self.percent():.0f}% ") + f"{human_size(self.done)} of {human_size(self.total)}",
                 human_rate(self.meter.rate),
                 f"{human_duration(eta)} left" if eta is not None and self.done < self.total else "",
                 self.dataset or ""]
        line = ", ".join(p for p in parts if p)
        return f"{line}; {self.slow}" if self.slow else line

    def report(self) -> Report:
        return {"command": self.command, "done_bytes": self.done, "total_bytes": self.total,
                "percent": self.percent(), "rate_bytes_per_s": int(self.meter.rate), "eta_s": self.eta(),
                "elapsed_s": round(time.monotonic() - self.meter.started, 3), "dataset": self.dataset,
                "slow": self.slow}

    def _write_fd(self, line: str) -> None:
        assert self.fd_file is not None, "only called with a file descriptor"
        try:
            self.fd_file.write(line)
            self.fd_file.flush()
        except OSError as e:
            # Progress is for watching: a reader that went away must not fail the backup.
            print(f"tzero: --progress-fd {self.fd_file.name}: {e.strerror or e}; no more progress there",
                  file=sys.stderr)
            _close(self.fd_file)
            self.fd_file = None


def _columns() -> int | None:
    """None when standard error is a terminal of known width (tqdm follows it), else 100."""
    try:
        return None if os.get_terminal_size(sys.stderr.fileno()).columns > 0 else 100
    except (OSError, ValueError):
        return 100


def _open_fd(fd: int) -> IO[str]:
    try:
        os.fstat(fd)
        return open(fd, "w", closefd=False)
    except OSError:
        raise UsageError(f"--progress-fd {fd}: not an open file descriptor") from None


def _close(f: IO[str]) -> None:
    try:
        f.close()
    except OSError:
        pass
