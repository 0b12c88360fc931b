"""The control protocol's vocabulary, shared by the plugin and the controller.

Messages are JSON objects, one per line (UTF-8, newline-terminated, at most
MAX_LINE bytes). Every request carries "op"; every reply carries "ok", and
failures add "error" (a code from ERRORS) and "message" (one line for humans).
docs/control-protocol.md is the full description. Both sides import it: the plugin
validates requests with it, the controller builds them and reads the defaults.
"""

import json
from collections.abc import Callable, Iterable, Mapping
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

# Bounds, checked on both sides (the plugin refuses a request outside them, `tzero backup`
# an option). The freeze deadline is the longest an application write may wait for a
# freeze, so it stays well under a minute. The lease is how long a controller that went
# silent (stopped, hung) keeps its session, with every write to an uncopied chunk paying
# copy-before-write and the side store filling: two minutes at most; and at least long
# enough for the controller's heartbeat (every lease/4, at most 0.5 s) to keep it alive.
MIN_DEADLINE_MS, MAX_DEADLINE_MS = 1, 30_000
MIN_LEASE_MS, MAX_LEASE_MS = 100, 120_000
MAX_SAVED_LIMIT = 1 << 15  # chunk numbers per reply: well under MAX_LINE, whatever their size
MAX_CHANGES_LIMIT = DEFAULT_CHANGES_LIMIT  # [first, count] runs per reply: likewise
MAX_REASON = 4096  # characters of an abort reason
MAX_POSITION = (1 << 63) - 1  # byte offsets and chunk numbers: what a signed 64-bit field holds

# What gives way when a backup and an application cannot both go on (side store full, a
# device error while saving an old chunk, a lost controller): the backup is abandoned, the
# application's write goes through. The subsystem says so in `hello`; no other policy exists.
FAILURE_POLICY = "break-backup"


def _int_in(lo: int, hi: int) -> Callable[[object], str | None]:
    def check(value: object) -> str | None:
        if type(value) is not int:
            return "must be an integer"
        if not lo <= value <= hi:
            return f"must be from {lo} to {hi}"
        return None
    return check


def _of_type(kind: type, name: str) -> Callable[[object], str | None]:
    return lambda value: None if type(value) is kind else f"must be {name}"


def _names(value: object) -> str | None:
    if type(value) is not list or not all(type(n) is str for n in value):
        return "must be a list of names"
    return None


def _pairs(value: object) -> str | None:
    """[[a, b], ...] with 0 <= a, b <= MAX_POSITION: track's byte ranges, release's chunk runs."""
    if type(value) is not list:
        return "must be a list of [integer, integer] pairs"
    for pair in value:
        if not (type(pair) is list and len(pair) == 2 and all(type(x) is int for x in pair)):
            return "must be a list of [integer, integer] pairs"
        if not all(0 <= x <= MAX_POSITION for x in pair):
            return f"holds a pair out of range (0 to {MAX_POSITION})"
    return None


def _track(value: object) -> str | None:
    if type(value) is not dict:
        return "must be an object mapping exports to [offset, length] pairs"
    return next((f"{brief(name)} {problem}" for name, ranges in value.items() if (problem := _pairs(ranges))), None)


_SCALAR = (str, int, float, bool, type(None))


def _counters(value: object) -> str | None:
    """The copier's counters: an object of scalars, or of objects of scalars (read_path)."""
    if type(value) is not dict:
        return "must be an object"
    for v in value.values():
        if isinstance(v, dict):
            if not all(isinstance(x, _SCALAR) for x in v.values()):
                return "must hold numbers, strings or objects of them"
        elif not isinstance(v, _SCALAR):
            return "must hold numbers, strings or objects of them"
    return None


def _generations(value: object) -> str | None:
    """open's since: {export: generation id}, each id a non-empty string."""
    if type(value) is not dict or not all(type(g) is str and g for g in value.values()):
        return "must be an object mapping exports to generation ids (strings)"
    return None


def _reason(value: object) -> str | None:
    if type(value) is not str:
        return "must be a string"
    return f"is longer than {MAX_REASON} characters" if len(value) > MAX_REASON else None


# A field's check: None if VALUE is acceptable, else what is wrong with it ("must be ...").
Check = Callable[[object], str | None]

# op -> {field: (check, required)}. Every field's type and range is checked here, before the
# plugin looks at it; what needs the subsystem (export names, sizes) is checked there.
OPS: dict[str, dict[str, tuple[Check, bool]]] = {
    "hello": {"version": (_int_in(0, (1 << 31) - 1), True)},
    # track: {export: [[offset, length], ...]}: only chunks touching these byte ranges
    # are copied-before-write; an export of the session not named there is tracked whole.
    # since: {export: generation}: the backup this one counts from; where the changes since
    # it are known, only changed chunks (and keep's) stay tracked at freeze.
    "open": {"exports": (_names, False), "lease_ms": (_int_in(MIN_LEASE_MS, MAX_LEASE_MS), False),
             "track": (_track, False), "since": (_generations, False), "keep": (_track, False)},
    "freeze": {"deadline_ms": (_int_in(MIN_DEADLINE_MS, MAX_DEADLINE_MS), False),
               "flush": (_of_type(bool, "true or false"), False)},
    "thaw": {},
    "release": {"export": (_of_type(str, "a string"), True), "ranges": (_pairs, True)},
    "saved": {"export": (_of_type(str, "a string"), True), "limit": (_int_in(1, MAX_SAVED_LIMIT), False)},
    # the chunks of an export changed since open's `since` base, in pages of [first, count] runs
    "changes": {"export": (_of_type(str, "a string"), True), "first": (_int_in(0, MAX_POSITION), False),
                "limit": (_int_in(1, MAX_CHANGES_LIMIT), False)},
    # copier: the controller's copy counters, kept by the session for `tzero status`.
    "heartbeat": {"copier": (_counters, False)},
    "status": {},
    "close": {},
    "abort": {"reason": (_reason, False)},
}

ERRORS = {
    "bad-message": "the line is not a well-formed request",
    "bad-version": "no protocol version in common",
    "hello-first": "the first request on a connection must be hello",
    "denied": "only the user serving the subsystem, or root, may use its control socket",
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


def brief(value: object, limit: int = 60) -> str:
    """VALUE's repr cut to LIMIT characters: what a message quotes of what it was given."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _no_constant(name: str) -> object:
    raise ValueError(f"{name} is not a JSON number")


def parse_request(line: bytes) -> Message:
    """Decode and validate one request line; raises ProtocolError('bad-message'), nothing else."""
    try:
        msg = json.loads(line, parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError) as e:  # ValueError: JSON's, and integers of over 4300 digits
        raise ProtocolError("bad-message", f"not JSON: {brief(str(e), 120)}") from None
    except RecursionError:
        raise ProtocolError("bad-message", "not JSON: nested too deep") from None
    if type(msg) is not dict:
        raise ProtocolError("bad-message", "a request is a JSON object")
    op = msg.get("op")
    if type(op) is not str or op not in OPS:
        raise ProtocolError("bad-message", f"unknown op {brief(op)}")
    fields = OPS[op]
    for name, value in msg.items():
        if name == "op":
            continue
        if name not in fields:
            raise ProtocolError("bad-message", f"{op}: unexpected field {brief(name)}")
        problem = fields[name][0](value)
        if problem:
            raise ProtocolError("bad-message", f"{op}: field {name!r} {problem}")
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
