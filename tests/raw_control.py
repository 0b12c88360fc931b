"""A bare control-protocol client for tests that must send what tzero never would."""

import json
import socket


class RawControl:
    def __init__(self, path: str):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(30)
        self.sock.connect(path)
        self.reader = self.sock.makefile("rb")

    def send_line(self, line: bytes) -> dict:
        self.sock.sendall(line + b"\n")
        return json.loads(self.reader.readline())

    def rq(self, op: str, **fields) -> dict:
        return self.send_line(json.dumps({"op": op, **fields}).encode())

    def close(self) -> None:
        self.reader.close()
        self.sock.close()
