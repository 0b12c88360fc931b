"""nbdkit's messages, passed on as tzero's log lines (controller/service.py): with a level
and, off journald, a timestamp; a Python exception a plugin callback raised as one line.

nbdkit's Python plugin prints the whole traceback of every exception a callback raises,
even the plugin's ordinary answer to a client's mistake (an export that does not exist,
a view of a session that ended): several lines of frames for one event. Here an OSError
(how the plugins refuse a request, with nbdkit.set_error) becomes one warning line,
"nbdkit: python[2]: open: no export named 'nope'"; any other exception is a bug and keeps
its traceback, at level error. With -v every traceback is kept.
"""

import re
import threading
from collections.abc import Callable, Iterable
from typing import IO

from controller import service

# "nbdkit: python[2]: error: /path/plugin.py: open: error: Traceback (most recent call last):"
_TRACEBACK_START = re.compile(r"^(?P<who>nbdkit: [^:]+): error: .*?: (?P<callback>\w+): error: "
                              r"Traceback \(most recent call last\):\s*$")
# the last line of a traceback, as nbdkit indents it: " FileNotFoundError: [Errno 2] no export named 'x'"
_EXCEPTION = re.compile(r"^\s?(?P<type>[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)?)(: (?P<text>.*))?$")
_ERRNO = re.compile(r"^\[Errno \d+\] ")
_CLIENT_ERRORS = {"OSError", "FileNotFoundError", "PermissionError", "IOError", "BlockingIOError",
                  "ConnectionError", "BrokenPipeError", "ConnectionResetError", "TimeoutError"}

Emit = Callable[[str, str], None]  # (level, message)
PLUGIN_WARNING = "tzero-plugin: warning: "


class Collapser:
    """Feeds on nbdkit's lines one by one and emits log lines (level, message)."""

    def __init__(self, emit: Emit, verbose: bool) -> None:
        self.emit = emit
        self.verbose = verbose
        self._held: list[str] = []  # the traceback being read, its first line first
        self._start: re.Match[str] | None = None

    def feed(self, line: str) -> None:
        line = line.rstrip("\n")
        if self._start is not None:
            self._held.append(line)
            if line.startswith("  ") or line.strip() == "":
                return
            self._end(line)
            return
        m = _TRACEBACK_START.match(line)
        if m:
            self._start, self._held = m, [line]
            return
        if line.startswith(PLUGIN_WARNING):  # the live plugin's own warnings (nbdplugin.subsystem.log)
            self.emit("warning", "tzero-plugin: " + line[len(PLUGIN_WARNING):])
        elif line.strip():
            self.emit(_level_of(line), line)

    def close(self) -> None:
        """End of nbdkit's output: a traceback cut short is passed on as it is."""
        if self._start is not None:
            for held in self._held:
                self.emit("error", held)
            self._start = None

    def _end(self, last: str) -> None:
        start, held = self._start, self._held
        assert start is not None, "called while a traceback is read"
        self._start, self._held = None, []
        m = _EXCEPTION.match(last)
        if m and m.group("type") in _CLIENT_ERRORS and not self.verbose:
            text = _ERRNO.sub("", m.group("text") or m.group("type"))
            self.emit("warning", f"{start.group('who')}: {start.group('callback')}: {text}")
            return
        for line in held:
            if line.strip():
                self.emit("error", line)


def _level_of(line: str) -> str:
    if ": debug: " in line:
        return "debug"
    if ": error: " in line or line.startswith("nbdkit: error"):
        return "error"
    if "warning" in line:
        return "warning"
    return "info"


def relay(stream: IO[str], verbose: bool, emit: Emit = service.log) -> threading.Thread:
    """Start a thread passing STREAM's lines (nbdkit's standard error) on until it ends."""

    def run(lines: Iterable[str]) -> None:
        c = Collapser(emit, verbose)
        for line in lines:
            c.feed(line)
        c.close()

    t = threading.Thread(target=run, args=(stream,), name="tzero-nbdkit-log", daemon=True)
    t.start()
    return t
