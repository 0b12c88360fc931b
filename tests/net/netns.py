"""Hosts as Linux network namespaces, for tests of a consistency group across hosts.

A Topology is a controller namespace wired to each host namespace by its own veth pair, each
pair on its own private /24 (the controller .1, the host .2). Nothing is routed anywhere else:
no namespace has a default route, the machine's own network is never touched, and the names
carry the test process's pid so that concurrent runs do not meet. A partition takes the
host's end of its link down: packets in flight and new ones are dropped without a word, as
on a real network, while the host still reaches itself (its applications keep running).

enter_netns moves the calling thread alone into a namespace (setns(2) on a thread is
per-thread for network namespaces); in_netns runs a function on a thread of its own there.
"""

import ctypes
import itertools
import os
import shutil
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)
_serial = itertools.count()
T = TypeVar("T")


def available() -> str | None:
    """Why namespaces cannot be made here, or None."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "ip (iproute2) is not installed"
    return None


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


def enter_netns(name: str) -> None:
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns {name}: {os.strerror(err)}")
    finally:
        os.close(fd)


def in_netns(name: str, fn: Callable[..., T], *args: object, timeout: float = 120) -> T:
    """FN(*ARGS) on a thread of its own inside namespace NAME: its result, or its exception."""
    box: dict[str, object] = {}

    def run() -> None:
        try:
            enter_netns(name)
            box["value"] = fn(*args)
        except BaseException as e:  # handed to the caller
            box["error"] = e

    t = threading.Thread(target=run, name=f"in-{name}", daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), f"{fn.__name__} in {name} did not finish in {timeout} s"
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["value"]  # type: ignore[return-value]


@dataclass
class Host:
    name: str  # "a", "b"
    ns: str
    address: str  # the host's own address, as the controller reaches it
    index: int


class Topology:
    def __init__(self, hosts: int = 2):
        tag = f"tz{os.getpid()}x{next(_serial)}"
        self.ctl = f"{tag}c"
        self.hosts = {chr(ord("a") + i): Host(chr(ord("a") + i), f"{tag}{chr(ord('a') + i)}", f"10.77.{i + 1}.2", i)
                      for i in range(hosts)}
        self.made: list[str] = []

    def create(self) -> "Topology":
        for ns in [self.ctl, *(h.ns for h in self.hosts.values())]:
            ip("netns", "add", ns)
            self.made.append(ns)
            ip("-n", ns, "link", "set", "lo", "up")
        for h in self.hosts.values():
            # Made straight inside the namespaces: no name ever exists in the machine's own.
            ip("link", "add", "name", f"to-{h.name}", "netns", self.ctl, "type", "veth", "peer", "name", "up0",
               "netns", h.ns)
            ip("-n", self.ctl, "addr", "add", f"10.77.{h.index + 1}.1/24", "dev", f"to-{h.name}")
            ip("-n", h.ns, "addr", "add", f"{h.address}/24", "dev", "up0")
            ip("-n", self.ctl, "link", "set", f"to-{h.name}", "up")
            ip("-n", h.ns, "link", "set", "up0", "up")
        return self

    def partition(self, host: str) -> None:
        ip("-n", self.hosts[host].ns, "link", "set", "up0", "down")

    def heal(self, host: str) -> None:
        """The link up again, and the neighbours each side gave up on forgotten (a failed ARP entry
        would otherwise answer "no route to host" for a while after the link is back)."""
        h = self.hosts[host]
        ip("-n", h.ns, "link", "set", "up0", "up")
        ip("-n", self.ctl, "neigh", "flush", "dev", f"to-{h.name}")
        ip("-n", h.ns, "neigh", "flush", "dev", "up0")

    def destroy(self) -> None:
        """Delete every namespace made (their veth pairs go with them), whatever state they are in."""
        for ns in reversed(self.made):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
        self.made.clear()
