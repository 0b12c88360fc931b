"""tzero status: what a storage subsystem is doing (session phase, chunks, side store, rate)."""

import argparse
import json

from common.units import human_rate, human_size
from controller.backup.control_client import ControlClient, JsonObject
from controller.cli.args import Subparsers, command, setting

DESCRIPTION = """\
Ask a storage subsystem, through its control socket (or HOST:PORT, over TLS with
--tls-certificates), what it serves and what it is doing: its exports and their sizes,
the chunk size, the side store's memory and spill file, and the session in progress
(phase, chunks copied, saved and pending, side store use and pressure, copy rate, the
copier's counters) or how the last one ended."""

EXAMPLES = (
    ("tzero status /run/s1.ctl", "what subsystem s1 is doing"),
    ("tzero status /run/s1.ctl --json | jq .session.phase", "the phase of its session, for a script"),
    ("tzero status s1.example:7000 --tls-certificates /etc/tzero/pki", "a subsystem on another host"),
)


def register(subparsers: Subparsers) -> None:
    p = command(subparsers, "status", summary="show a storage subsystem's exports and session",
                description=DESCRIPTION, examples=EXAMPLES)
    p.add_argument("control", metavar="CTL", help="control socket of the subsystem, or HOST:PORT / [IPV6]:PORT")
    setting(p, "--tls-certificates", key="tls-certificates", default=None, metavar="DIR",
            help="TLS for a subsystem on the network (DIR: ca-cert.pem, client-cert.pem, client-key.pem)")
    p.add_argument("--json", action="store_true", help="print one JSON object (docs/json.md)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    client = ControlClient(args.control, args.tls_certificates)
    try:
        status = client.request("status")
    finally:
        client.close()
    status.pop("ok", None)
    if args.json:
        print(json.dumps(status))
    else:
        print(format_status(args.control, status))
    return 0


def format_status(where: str, status: JsonObject) -> str:
    """STATUS as lines for a person. A field missing or of an unexpected type (a newer or an
    older subsystem, a controller that reported odd counters) shows as "?" or is left out:
    status prints what it can, never fails on a reply it only reads."""
    lines = [f"subsystem {where}: chunk {_size(_int(status, 'chunk_size'))}, side memory "
             f"{_size(_int(status, 'side_memory'))}, spill file {_size(_int(status, 'spill_file_bytes'))}"]
    tracking = _dict(status, "tracking") or {}
    for e in _list(status, "exports"):
        name = _text(e, "name")
        lines.append(f"  export {name}: {_size(_int(e, 'size'))}{_tracking(tracking.get(name), name in tracking)}")
    s = _dict(status, "session")
    if s is None:
        last = _dict(status, "last_session")
        why = f": {_text(last, 'abort_reason')}" if last and last.get("abort_reason") else ""
        ended = f" (last: {_text(last, 'session')} {_text(last, 'phase')}{why})" if last else ""
        lines.append("  no session" + ended)
        return "\n".join(lines)
    lines.append(f"  session {_text(s, 'session')}: {_text(s, 'phase')}")
    for name, counts in (_dict(s, "exports") or {}).items():
        if isinstance(counts, dict):
            untracked = f", {_num(_int(counts, 'untracked'))} untracked" if counts.get("untracked") else ""
            lines.append(f"    {name}: {_num(_int(counts, 'done'))} copied, {_num(_int(counts, 'saved'))} saved, "
                         f"{_num(_int(counts, 'pending'))} pending chunks{untracked}")
    pressure = ", under pressure" if s.get("pressure") is True else ""
    lines.append(f"    side store: {_size(_int(s, 'side_memory_bytes'))} in memory, "
                 f"{_size(_int(s, 'side_spill_bytes'))} spilled (peak {_size(_int(s, 'side_peak_bytes'))}){pressure}")
    rate = _number(s, "rate_bytes_per_s")
    lines.append(f"    copy-before-write: {_num(_int(s, 'chunks_cow'))} chunks; copied "
                 f"{_size(_int(s, 'released_bytes'))} at {'?' if rate is None else human_rate(rate)}")
    copier = _copier_line(_dict(s, "copier"))
    if copier:
        lines.append(copier)
    return "\n".join(lines)


def _tracking(t: object, listed: bool) -> str:
    """What an export's change map says, for its line (LISTED: the reply has an entry for it)."""
    if not listed or t is None:
        return ", changes not tracked"
    if not isinstance(t, dict):
        return ""
    if t.get("known") is False:
        return f", changes unknown ({_text(t, 'reason')}) until the next full backup"
    if t.get("generation") is None:
        return f", {_num(_int(t, 'changed_chunks'))} chunks changed, no backup yet"
    return f", {_num(_int(t, 'changed_chunks'))} chunks changed since backup generation {_text(t, 'generation')}"


def _copier_line(c: JsonObject | None) -> str | None:
    """The copier's counters the controller reported, those it reported, in one line."""
    if not c:
        return None
    parts = [f"{_int(c, key)} {words}" for key, words in (
        ("chunks_in_order", "chunks in order"), ("chunks_ahead", "ahead of order"),
        ("chunks_opportunistic", "opportunistically")) if _int(c, key) is not None]
    more = [text.format(_size(_int(c, key))) for key, text in (
        ("spilled_bytes", "{} spilled"), ("peak_host_buffer_bytes", "host buffer peak {}"))
        if _int(c, key) is not None]
    if not parts and not more:
        return None
    return "    copier: " + "; ".join(", ".join(p) for p in (parts, more) if p)


def _int(d: object, key: str) -> int | None:
    value = d.get(key) if isinstance(d, dict) else None
    return value if type(value) is int else None


def _number(d: object, key: str) -> float | None:
    value = d.get(key) if isinstance(d, dict) else None
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _dict(d: object, key: str) -> JsonObject | None:
    value = d.get(key) if isinstance(d, dict) else None
    return value if isinstance(value, dict) else None


def _list(d: object, key: str) -> list[object]:
    value = d.get(key) if isinstance(d, dict) else None
    return value if isinstance(value, list) else []


def _text(d: object, key: str) -> str:
    value = d.get(key) if isinstance(d, dict) else None
    return "?" if value is None or isinstance(value, (dict, list)) else str(value)


def _num(n: int | None) -> str:
    return "?" if n is None else str(n)


def _size(n: int | None) -> str:
    return "?" if n is None or n < 0 else human_size(n)
