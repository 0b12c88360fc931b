"""Start-up settings of the plugin, given as nbdkit key=value parameters.

    export=NAME=PATH   repeatable: serve PATH (block device or image file) as export NAME
    control=ADDRESS    the control socket: a unix socket path, HOST:PORT or [IPV6]:PORT
                       (this or control-fd is required)
    control-fd=N       a listening control socket passed in by socket activation, instead
    tls-certificates=DIR  the control channel over TCP with TLS, DIR's certificates (common/tls.py);
                       NBD over TCP is then served with TLS too (nbdkit's own, set up by tzero serve)
    insecure-plaintext-tcp=yes  allow TCP without TLS, on loopback only
    side-memory=SIZE   side store memory before spilling (default 256M)
    side-dir=DIR       where the spill file goes (default: the system temp dir)
    spill-keep=SIZE    cut the spill file back to SIZE after a session (default: keep it whole)
    chunk=SIZE         concordance chunk size, a power of two from 4K to 16M (default 64K)
    nbd-socket=PATH    where nbdkit serves NBD (announced to the controller in hello)
    nbd-port=PORT      or the TCP port it serves on
    nbd-host=ADDR      and the address it binds (default 127.0.0.1)
    state-dir=DIR      where the exports' change maps are kept across restarts (default: in memory only)
    tracking=off       no change tracking at all (default on)

Sizes follow common/units.py's grammar (64K, 256M, 1.5G). Everything is validated before anything is served.
"""

import os
import re
import tempfile

from common import units
from common.endpoint import Endpoint, EndpointError, check_transport, parse_endpoint
from common.fileio import unlinked_scratch_file

DEFAULT_CHUNK = 64 << 10
DEFAULT_SIDE_MEMORY = 256 << 20
MIN_CHUNK, MAX_CHUNK = 4 << 10, 16 << 20
EXPORT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class ConfigError(Exception):
    """a start-up parameter is wrong"""


def parse_size(text: str, what: str) -> int:
    """common/units.py's size grammar, its error a ConfigError."""
    try:
        return units.parse_size(text, what)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def parse_export(spec: str) -> tuple[str, str]:
    """'NAME=PATH' -> (NAME, absolute PATH)."""
    name, sep, path = spec.partition("=")
    if not sep or not path:
        raise ConfigError(f"export {spec!r}: expected NAME=PATH")
    if not EXPORT_NAME.fullmatch(name):
        raise ConfigError(f"export name {name!r}: use 1-64 letters, digits, '.', '_' or '-', "
                          "starting with a letter or digit")
    return name, os.path.abspath(path)


class PluginConfig:
    def __init__(self) -> None:
        self.exports: list[tuple[str, str]] = []
        self.control: Endpoint | None = None
        self.control_fd: int | None = None
        self.tls_certificates: str | None = None
        self.insecure_plaintext_tcp = False
        self.side_memory = DEFAULT_SIDE_MEMORY
        self.side_dir = tempfile.gettempdir()
        self.spill_keep: int | None = None
        self.chunk = DEFAULT_CHUNK
        self.nbd_socket: str | None = None
        self.nbd_port: int | None = None
        self.nbd_host = "127.0.0.1"
        self.state_dir: str | None = None
        self.tracking = True

    def set(self, key: str, value: str) -> None:
        if key == "export":
            name, path = parse_export(value)
            if any(name == n for n, _ in self.exports):
                raise ConfigError(f"export name {name!r} is given twice")
            self.exports.append((name, path))
        elif key == "control":
            try:
                control = parse_endpoint(value, "control")
            except EndpointError as e:
                raise ConfigError(str(e)) from None
            self.control = Endpoint(path=os.path.abspath(control.path)) if control.path is not None else control
        elif key == "control-fd":
            if not value.isdigit():
                raise ConfigError(f"control-fd {value!r}: not a file descriptor")
            self.control_fd = int(value)
        elif key == "tls-certificates":
            self.tls_certificates = os.path.abspath(value)
        elif key == "insecure-plaintext-tcp":
            if value not in ("yes", "no"):
                raise ConfigError(f"insecure-plaintext-tcp {value!r}: yes or no")
            self.insecure_plaintext_tcp = value == "yes"
        elif key == "nbd-host":
            self.nbd_host = value
        elif key == "side-memory":
            self.side_memory = parse_size(value, "side-memory")
        elif key == "side-dir":
            self.side_dir = os.path.abspath(value)
        elif key == "spill-keep":
            self.spill_keep = parse_size(value, "spill-keep")
        elif key == "chunk":
            self.chunk = parse_size(value, "chunk")
        elif key == "nbd-socket":
            self.nbd_socket = os.path.abspath(value)
        elif key == "nbd-port":
            if not value.isdigit() or not 0 < int(value) < 65536:
                raise ConfigError(f"nbd-port {value!r}: not a TCP port")
            self.nbd_port = int(value)
        elif key == "state-dir":
            self.state_dir = os.path.abspath(value)
        elif key == "tracking":
            if value not in ("on", "off"):
                raise ConfigError(f"tracking {value!r}: on or off")
            self.tracking = value == "on"
        else:
            raise ConfigError(f"unknown parameter {key!r} (expected export, control, control-fd, tls-certificates, "
                              "insecure-plaintext-tcp, side-memory, side-dir, spill-keep, chunk, nbd-socket, "
                              "nbd-port, nbd-host, state-dir, tracking)")

    def validate(self) -> None:
        if not self.exports:
            raise ConfigError("no exports: give at least one export=NAME=PATH")
        if not self.control and self.control_fd is None:
            raise ConfigError("no control socket: give control=PATH or control=HOST:PORT")
        tls = self.tls_certificates is not None
        try:
            if self.control is not None:
                check_transport(self.control, tls, self.insecure_plaintext_tcp, "control")
            if self.nbd_port is not None:
                check_transport(Endpoint(host=self.nbd_host, port=self.nbd_port), tls, self.insecure_plaintext_tcp,
                                "NBD")
        except EndpointError as e:
            raise ConfigError(str(e)) from None
        if not (MIN_CHUNK <= self.chunk <= MAX_CHUNK) or self.chunk & (self.chunk - 1):
            raise ConfigError(f"chunk {self.chunk}: must be a power of two from 4K to 16M")
        try:  # found out now, not when the first chunk spills in the middle of a backup
            os.close(unlinked_scratch_file(self.side_dir, "tzero-spill-"))
        except OSError as e:
            raise ConfigError(f"side-dir {self.side_dir}: cannot make a spill file there: {e.strerror}") from None
        if self.state_dir and self.tracking:
            try:
                os.makedirs(self.state_dir, mode=0o700, exist_ok=True)
            except OSError as e:
                raise ConfigError(f"state-dir {self.state_dir}: {e.strerror}") from None
            if not os.access(self.state_dir, os.W_OK | os.X_OK):
                raise ConfigError(f"state-dir {self.state_dir}: not writable")
