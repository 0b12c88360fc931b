"""NBD URIs as `tzero attach` takes them, and kernel NBD device names.

    nbd+unix:///EXPORT?socket=PATH     a unix socket
    nbd://HOST[:PORT]/EXPORT           TCP (port 10809 by default)
"""

import re
import urllib.parse
from dataclasses import dataclass

from controller.errors import UsageError

DEFAULT_PORT = 10809
MAX_NAME = 4096                        # the protocol's limit on export names


@dataclass(frozen=True)
class NbdUri:
    """Where an export is: a unix socket path, or a TCP host and port; and its name."""

    export: str
    socket_path: str | None = None
    host: str | None = None
    port: int = DEFAULT_PORT

    def __str__(self) -> str:
        quoted = urllib.parse.quote(self.export)
        if self.socket_path is not None:
            return f"nbd+unix:///{quoted}?socket={self.socket_path}"
        assert self.host is not None, "parse_uri gives a TCP URI its host"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"nbd://{host}:{self.port}/{quoted}"


def parse_uri(text: str) -> NbdUri:
    """Parse an NBD URI (the subset of the NBD URI spec that tzero attach supports)."""
    bad = f"{text!r} is not an NBD URI (nbd+unix:///EXPORT?socket=PATH or nbd://HOST[:PORT]/EXPORT)"
    try:
        parts = urllib.parse.urlsplit(text)
        port = parts.port
    except ValueError:
        raise UsageError(bad) from None
    export = urllib.parse.unquote(parts.path[1:] if parts.path.startswith("/") else parts.path)
    if len(export.encode()) > MAX_NAME:
        raise UsageError(f"export name longer than {MAX_NAME} bytes")
    query = urllib.parse.parse_qs(parts.query)
    if parts.scheme == "nbd+unix":
        paths = query.get("socket", [])
        if parts.netloc or len(paths) != 1 or not paths[0]:
            raise UsageError(f"{bad}: nbd+unix needs no host and exactly one socket=PATH")
        return NbdUri(export=export, socket_path=paths[0])
    if parts.scheme == "nbd":
        if not parts.hostname or query:
            raise UsageError(f"{bad}: nbd:// needs a host and takes no query")
        return NbdUri(export=export, host=parts.hostname, port=port or DEFAULT_PORT)
    if parts.scheme in ("nbds", "nbds+unix"):
        raise UsageError(f"{text!r}: TLS (nbds) is not supported by tzero attach")
    raise UsageError(bad)


def parse_device(text: str) -> int:
    """/dev/nbdN (or nbdN) -> N."""
    m = re.fullmatch(r"(?:/dev/)?nbd(\d+)", text)
    if not m:
        raise UsageError(f"{text!r} is not an NBD device (expected /dev/nbdN)")
    return int(m.group(1))
