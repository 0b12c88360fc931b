"""A bare control-protocol client for tests that must send what tzero never would."""

import json
import socket
import ssl

from common.endpoint import parse_endpoint


class RawControl:
    """A connection to ADDRESS (a unix socket or HOST:PORT), through CONTEXT's TLS if given."""

    def __init__(self, address: str, context: ssl.SSLContext | None = None):
        where = parse_endpoint(str(address), "address")
        if where.path is not None:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(30)
            self.sock.connect(where.path)
        else:
            self.sock = socket.create_connection((where.host, where.port), timeout=30)
            if context is not None:
                self.sock = context.wrap_socket(self.sock, server_hostname=where.host)
        self.reader = self.sock.makefile("rb")

    def send_line(self, line: bytes) -> dict:
        self.sock.sendall(line + b"\n")
        return json.loads(self.reader.readline())

    def rq(self, op: str, **fields) -> dict:
        return self.send_line(json.dumps({"op": op, **fields}).encode())

    def close(self) -> None:
        self.reader.close()
        self.sock.close()
