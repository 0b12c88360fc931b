"""Running as a service: telling systemd where we are, sockets it hands us, log lines.

- notify(): sd_notify(3) by hand, one datagram to $NOTIFY_SOCKET (a path, or an abstract
  socket written @name), so no library is needed; without the variable it does nothing.
- listen_fds(): socket activation, sd_listen_fds(3) by hand: the sockets systemd opened for
  this process ($LISTEN_PID is ours), by their FileDescriptorName= ($LISTEN_FDNAMES).
- Log: lines on standard error with a level. Under journald ($JOURNAL_STREAM names our
  standard error) a line is "<PRIORITY>message", which journald reads as the level and
  stamps with the time itself; elsewhere "2026-11-25 10:00:00.123 tzero[PID] LEVEL: message".
"""

import datetime
import os
import socket
import sys
from collections.abc import Mapping

SD_LISTEN_FDS_START = 3
# syslog priorities, as sd-daemon(3)'s "<N>" prefixes
PRIORITY = {"error": 3, "warning": 4, "notice": 5, "info": 6, "debug": 7}


def notify(state: str, environ: Mapping[str, str] = os.environ) -> bool:
    """Send STATE ("READY=1", "STOPPING=1", "STATUS=...") to the service manager; False when
    there is none or it cannot be reached (a service runs on without it)."""
    where = environ.get("NOTIFY_SOCKET")
    if not where or where[0] not in "/@":
        return False
    address = "\0" + where[1:] if where[0] == "@" else where
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.sendto(state.encode(), address)
        return True
    except OSError:
        return False


def listen_fds(environ: Mapping[str, str] = os.environ) -> dict[str, list[int]]:
    """The listening sockets passed to this process, by name ("unknown" for unnamed ones), or
    {} when there are none or they were meant for another process."""
    try:
        if int(environ.get("LISTEN_PID", "")) != os.getpid():
            return {}
        count = int(environ.get("LISTEN_FDS", ""))
    except ValueError:
        return {}
    names = environ.get("LISTEN_FDNAMES", "").split(":") if environ.get("LISTEN_FDNAMES") else []
    found: dict[str, list[int]] = {}
    for i in range(count):
        name = names[i] if i < len(names) and names[i] else "unknown"
        found.setdefault(name, []).append(SD_LISTEN_FDS_START + i)
    return found


def under_journald(environ: Mapping[str, str] = os.environ) -> bool:
    """True when standard error is the journal's stream (systemd.exec(5), $JOURNAL_STREAM)."""
    dev, _, ino = environ.get("JOURNAL_STREAM", "").partition(":")
    try:
        st = os.fstat(sys.stderr.fileno())
        return (st.st_dev, st.st_ino) == (int(dev), int(ino))
    except (OSError, ValueError):
        return False


def log(level: str, message: str) -> None:
    """One log line on standard error (see the module's docstring for its shape)."""
    if under_journald():
        line = f"<{PRIORITY[level]}>{message}"
    else:
        now = datetime.datetime.now().isoformat(sep=" ", timespec="milliseconds")
        line = f"{now} tzero[{os.getpid()}] {level.upper()}: {message}"
    print(line, file=sys.stderr, flush=True)
