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
    lines = [f"subsystem {where}: chunk {human_size(status['chunk_size'])}, side memory "
             f"{human_size(status['side_memory'])}, spill file {human_size(status['spill_file_bytes'])}"]
    tracking = status.get("tracking") or {}
    for e in status["exports"]:
        lines.append(f"  export {e['name']}: {human_size(e['size'])}{_tracking(tracking.get(e['name']))}")
    s = status["session"]
    if s is None:
        last = status.get("last_session")
        why = f": {last['abort_reason']}" if last and last.get("abort_reason") else ""
        lines.append("  no session" + (f" (last: {last['session']} {last['phase']}{why})" if last else ""))
        return "\n".join(lines)
    lines.append(f"  session {s['session']}: {s['phase']}")
    for name, counts in s["exports"].items():
        if counts:
            untracked = f", {counts['untracked']} untracked" if counts.get("untracked") else ""
            lines.append(f"    {name}: {counts['done']} copied, {counts['saved']} saved, "
                         f"{counts['pending']} pending chunks{untracked}")
    lines.append(f"    side store: {human_size(s['side_memory_bytes'])} in memory, "
                 f"{human_size(s['side_spill_bytes'])} spilled (peak {human_size(s['side_peak_bytes'])})"
                 f"{', under pressure' if s['pressure'] else ''}")
    lines.append(f"    copy-before-write: {s['chunks_cow']} chunks; copied {human_size(s['released_bytes'])}"
                 f" at {human_rate(s['rate_bytes_per_s'])}")
    c = s.get("copier")
    if c:
        lines.append(f"    copier: {c['chunks_in_order']} chunks in order, {c['chunks_ahead']} ahead of order, "
                     f"{c['chunks_opportunistic']} opportunistically; {human_size(c['spilled_bytes'])} spilled, "
                     f"host buffer peak {human_size(c['peak_host_buffer_bytes'])}")
    return "\n".join(lines)


def _tracking(t: JsonObject | None) -> str:
    """What an export's change map says, for its line."""
    if t is None:
        return ", changes not tracked"
    if not t["known"]:
        return f", changes unknown ({t['reason']}) until the next full backup"
    if t["generation"] is None:
        return f", {t['changed_chunks']} chunks changed, no backup yet"
    return f", {t['changed_chunks']} chunks changed since backup generation {t['generation']}"
