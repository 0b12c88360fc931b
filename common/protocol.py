"""The control protocol's vocabulary, shared by the plugin and the controller.

Messages are JSON objects, one per line (UTF-8, newline-terminated, at most
MAX_LINE bytes). Every request carries "op"; every reply carries "ok", and
failures add "error" (a code from ERRORS) and "message" (one line for humans).
docs/control-protocol.md is the full description. Both sides import it: the plugin
validates requests with it, the controller builds them and reads the defaults.
"""

import json
from collections.abc import Iterable, Mapping
from typing import Any

# A decoded request: a JSON object whose values are whatever JSON holds, so Any. parse_request
# has checked the fields against OPS, which says each one's type.
Message = dict[str, Any]
# A reply as the plugin builds it, before encode.
Reply = dict[str, object]

VERSION = 1
SUPPORTED_VERSIONS = (1,)
MAX_LINE = 1 << 20

# Defaults of the optional fields, the same on both sides.
DEFAULT_LEASE_MS = 30000  # open: a silent controller loses its session after this long
DEFAULT_DEADLINE_MS = 2000  # freeze: the longest any application write is held
DEFAULT_SAVED_LIMIT = 4096  # saved: chunk numbers per reply
DEFAULT_CHANGES_LIMIT = 16384  # changes: [first, count] runs per reply (well under MAX_LINE)

# What gives way when a backup and an application cannot both go on (side store full, a
# device error while saving an old chunk, a lost controller): the backup is abandoned, the
# application's write goes through. The subsystem says so in `hello`; no other policy exists.
FAILURE_POLICY = "break-backup"

# op -> {field: (type, required)}
OPS: dict[str, dict[str, tuple[type, bool]]] = {
    "hello": {"version": (int, True)},
    # track: {export: [[offset, length], ...]}: only chunks touching these byte ranges
    # are copied-before-write; an export of the session not named there is tracked whole.
    # since: {export: generation}: the backup this one counts from; where the changes since
    # it are known, only changed chunks (and keep's) stay tracked at freeze.
    "open": {"exports": (list, False), "lease_ms": (int, False), "track": (dict, False), "since": (dict, False),
             "keep": (dict, False)},
    "freeze": {"deadline_ms": (int, False), "flush": (bool, False)},
    "thaw": {},
    "release": {"export": (str, True), "ranges": (list, True)},
    "saved": {"export": (str, True), "limit": (int, False)},
    # the chunks of an export changed since open's `since` base, in pages of [first, count] runs
    "changes": {"export": (str, True), "first": (int, False), "limit": (int, False)},
    # copier: the controller's copy counters, kept by the session for `tzero status`.
    "heartbeat": {"copier": (dict, False)},
    "status": {},
    "close": {},
    "abort": {"reason": (str, False)},
}

ERRORS = {
    "bad-message": "the line is not a well-formed request",
    "bad-version": "no protocol version in common",
    "hello-first": "the first request on a connection must be hello",
    "busy": "another session is open on this subsystem",
    "no-session": "no session is open",
    "not-owner": "the session belongs to another control connection",
    "wrong-phase": "the request does not fit the session's phase",
    "unknown-export": "no export by that name on this subsystem",
    "freeze-failed": "writes could not be frozen before the deadline",
    "aborted": "the session was aborted",
    "internal": "the subsystem failed unexpectedly",
}


class ProtocolError(Exception):
    def __init__(self, code: str, message: str) -> None:
        assert code in ERRORS, f"error codes are listed in ERRORS: {code}"
        super().__init__(message)
        self.code = code
        self.message = message

    def reply(self) -> Reply:
        return {"ok": False, "error": self.code, "message": self.message}


def parse_request(line: bytes) -> Message:
    """Decode and validate one request line; raises ProtocolError('bad-message')."""
    try:
        msg = json.loads(line)
    except (UnicodeDecodeError, ValueError) as e:
        raise ProtocolError("bad-message", f"not JSON: {e}") from None
    if not isinstance(msg, dict):
        raise ProtocolError("bad-message", "a request is a JSON object")
    op = msg.get("op")
    if op not in OPS:
        raise ProtocolError("bad-message", f"unknown op {op!r}")
    fields = OPS[op]
    for name, value in msg.items():
        if name == "op":
            continue
        if name not in fields:
            raise ProtocolError("bad-message", f"{op}: unexpected field {name!r}")
        kind = fields[name][0]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ProtocolError("bad-message", f"{op}: field {name!r} must be {kind.__name__}")
    for name, (_, required) in fields.items():
        if required and name not in msg:
            raise ProtocolError("bad-message", f"{op}: missing field {name!r}")
    return msg


def encode(msg: Mapping[str, object]) -> bytes:
    return json.dumps(msg, separators=(",", ":")).encode() + b"\n"


def ranges_of(chunks: Iterable[int]) -> list[list[int]]:
    """Sorted chunk numbers -> [[first, count], ...] runs (the form release takes)."""
    runs: list[list[int]] = []
    for c in chunks:
        if runs and runs[-1][0] + runs[-1][1] == c:
            runs[-1][1] += 1
        else:
            runs.append([c, 1])
    return runs
