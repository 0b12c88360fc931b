"""A control socket between a controller and a subsystem that passes every line through, and
can hold the request of a chosen op: how a test stops a backup at an exact phase (session
open, frozen, mid-copy) with events rather than sleeps.

    proxy = ControlProxy(sub.control, tmp_path / "proxy.ctl", hold="thaw")
    ... tzero backup -s proxy.path ...
    assert proxy.held.wait(30)   # the controller sent thaw: the subsystem is frozen
    ... signal the controller ...
    proxy.release()              # forward it now (or never)

When the controller's side closes, the proxy closes the subsystem's side, as the controller
dying would: the subsystem then aborts that connection's session."""

import json
import os
import socket
import threading


class ControlProxy:
    def __init__(self, upstream: str, path, hold: str | None = None):
        self.upstream = upstream
        self.path = str(path)
        self.hold = hold
        self.held = threading.Event()  # set when a request of op HOLD arrived and is being held
        self._go = threading.Event()
        self.ops: list[str] = []  # every op passed on, in order
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(self.path)
        self._listener.listen(64)
        self._socks: list[socket.socket] = []
        self._cut = False
        threading.Thread(target=self._accept, daemon=True).start()

    def release(self) -> None:
        """Forward the held request (and let later ones of that op through)."""
        self._go.set()

    def cut(self) -> None:
        """Drop the held request and hang up on both sides: what the subsystem sees when the
        controller dies before its request leaves."""
        self._cut = True
        self._go.set()
        for s in self._socks:
            _hang_up(s)

    def close(self) -> None:
        self._go.set()
        self._listener.close()
        for s in self._socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
        if os.path.exists(self.path):
            os.unlink(self.path)

    def _accept(self) -> None:
        while True:
            try:
                down, _ = self._listener.accept()
            except OSError:
                return
            up = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            up.connect(self.upstream)
            self._socks += [down, up]
            threading.Thread(target=self._requests, args=(down, up), daemon=True).start()
            threading.Thread(target=self._pump, args=(up, down), daemon=True).start()

    def _requests(self, down: socket.socket, up: socket.socket) -> None:
        try:
            with down.makefile("rb") as reader:
                for line in reader:
                    op = _op(line)
                    if op == self.hold and not self._go.is_set():
                        self.held.set()
                        self._go.wait()
                    if self._cut:
                        return
                    self.ops.append(op)
                    up.sendall(line)
        except OSError:
            pass
        finally:
            _hang_up(up)

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(1 << 16):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            _hang_up(dst)


def _op(line: bytes) -> str:
    try:
        return str(json.loads(line).get("op"))
    except (ValueError, AttributeError):
        return "?"


def _hang_up(s: socket.socket) -> None:
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
