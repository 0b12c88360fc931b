"""Socket activation of `tzero serve`: the sockets systemd opened, handed on to nbdkit.

systemd passes listening sockets from fd 3 on, named by FileDescriptorName= in the .socket
unit (systemd/tzero-serve@.socket): `nbd` for the NBD socket applications connect to, and
`control` for the control socket. nbdkit 1.32 takes socket activation itself (nbdkit-service(1):
LISTEN_FDS and LISTEN_PID, fds from 3, and then no -U or -p), so the NBD sockets are moved to
fds 3.. and passed to nbdkit with LISTEN_FDS set, and LISTEN_PID set to nbdkit's own pid by
`sh -c 'LISTEN_PID=$$ exec ...'` (nbdkit ignores sockets meant for another process). The
control socket goes right after them, to the plugin, as control-fd=N. Unnamed sockets are
taken in order: the first is NBD, the second the control socket.
"""

import os
import socket
from dataclasses import dataclass

from controller import service
from controller.errors import UsageError

START = service.SD_LISTEN_FDS_START


@dataclass(frozen=True)
class Activation:
    """Where the activated sockets now are, and what they listen on."""

    nbd_fds: int  # how many NBD sockets, at fds START..START+nbd_fds-1
    nbd_socket: str | None  # the first NBD socket's path (unix), or
    nbd_port: int | None  # its TCP port
    control_fd: int | None  # right after them, when one was passed
    control_path: str | None


def take() -> Activation | None:
    """The sockets systemd passed to this process, rearranged for nbdkit; None when none were."""
    passed = service.listen_fds()
    if not passed:
        return None
    control = passed.pop("control", [])
    nbd = passed.pop("nbd", [])
    unnamed = passed.pop("unknown", [])
    if passed:
        raise UsageError(f"socket activation: unknown socket names {', '.join(sorted(passed))} "
                         "(name them nbd and control with FileDescriptorName=)")
    if unnamed:
        nbd, control = nbd + unnamed[:1], control + unnamed[1:]
    if not nbd or len(control) > 1:
        raise UsageError("socket activation: pass one or more NBD sockets (named nbd) and at most one "
                         "control socket (named control)")
    placed = _place(nbd + control)
    return Activation(len(nbd), *_address(placed[0]), placed[len(nbd)] if control else None,
                      _unix_path(placed[len(nbd)]) if control else None)


def _place(fds: list[int]) -> list[int]:
    """Move FDS to START, START+1, ... in this order; returns the new numbers."""
    held = [os.dup(fd) for fd in fds]  # out of the way first: the targets may be among the sources
    for fd in fds:
        os.close(fd)
    placed = []
    for i, fd in enumerate(held):
        os.dup2(fd, START + i)  # inheritable, for nbdkit
        os.close(fd)
        placed.append(START + i)
    return placed


def _address(fd: int) -> tuple[str | None, int | None]:
    with socket.socket(fileno=os.dup(fd)) as s:
        name = s.getsockname()
        if s.family == socket.AF_UNIX and isinstance(name, str):
            return name, None
        if s.family in (socket.AF_INET, socket.AF_INET6):
            return None, int(name[1])
    raise UsageError(f"socket activation: NBD socket (file descriptor {fd}) is neither a unix nor a TCP socket")


def _unix_path(fd: int) -> str:
    path, _ = _address(fd)
    if path is None:
        raise UsageError("socket activation: the control socket must be a unix socket")
    return path


def nbdkit_command(cmd: list[str], activation: Activation) -> tuple[list[str], dict[str, str]]:
    """CMD run so that nbdkit takes the NBD sockets, and the environment to run it in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LISTEN_")}
    env["LISTEN_FDS"] = str(activation.nbd_fds)
    return ["sh", "-c", 'LISTEN_PID=$$ exec "$@"', "nbdkit", *cmd], env


def passed_fds(activation: Activation) -> tuple[int, ...]:
    last = START + activation.nbd_fds + (1 if activation.control_fd is not None else 0)
    return tuple(range(START, last))
