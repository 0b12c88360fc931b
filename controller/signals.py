"""Stopping on SIGINT, SIGTERM and SIGHUP: all three end a command the same way.

What `timeout`, systemd, a closed terminal and Ctrl-C send all become one exception,
Interrupted (a KeyboardInterrupt, so every clean-up that handles Ctrl-C handles them):
a backup aborts its sessions and removes its partial file, a restore removes its own,
and the command exits with 128 + the signal's number (130, 143, 129) after one line.

Two rules keep that clean:
- libnbd runs Python callbacks (a read's completion) inside its own calls, and an
  exception raised there is printed with a traceback and lost. Code that calls into
  libnbd where callbacks may run does so inside `deferred()`: a signal that arrives
  then is raised as soon as the block ends.
- Once the first signal is raised, later ones are only noted: the clean-up it started
  (aborting sessions, removing files) is not cut short by a second Ctrl-C.
"""

import contextlib
import signal
from collections.abc import Iterator
from types import FrameType

STOPPING = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Interrupted(KeyboardInterrupt):
    """a signal asked tzero to stop"""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(f"interrupted by {signal.Signals(signum).name}")


class _State:
    deferring = 0  # depth of deferred() blocks on the main thread
    pending: int | None = None  # a signal that arrived inside one
    raised = False  # the first signal was raised: later ones are only noted


def _handle(signum: int, frame: FrameType | None) -> None:
    if _State.raised:
        return
    if _State.deferring:
        _State.pending = _State.pending or signum
        return
    _State.raised = True
    raise Interrupted(signum)


def install() -> None:
    """Make SIGINT, SIGTERM and SIGHUP raise Interrupted in the main thread."""
    _State.deferring, _State.pending, _State.raised = 0, None, False
    for s in STOPPING:
        signal.signal(s, _handle)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Hold a stopping signal until the block ends (see the module docstring)."""
    _State.deferring += 1
    try:
        yield
    finally:
        _State.deferring -= 1
        if not _State.deferring and _State.pending is not None and not _State.raised:
            signum, _State.pending = _State.pending, None
            _State.raised = True
            raise Interrupted(signum)


def exit_status(e: KeyboardInterrupt) -> int:
    """128 + the signal's number, as shells report a command a signal ended."""
    return 128 + (e.signum if isinstance(e, Interrupted) else signal.SIGINT)
