"""tzero status: what a storage subsystem is doing (session phase, chunks, side store, rate)."""

import argparse
import json

from controller.backup.control_client import ControlClient, JsonObject
from controller.cli.args import Subparsers


def register(subparsers: Subparsers) -> None:
    p = subparsers.add_parser("status", help="show a storage subsystem's session state")
    p.add_argument("control", metavar="CTL", help="control socket of the subsystem")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    client = ControlClient(args.control)
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
    lines = [f"subsystem {where}: chunk {status['chunk_size'] >> 10} KiB, side memory {status['side_memory'] >> 20} MiB"
             f", spill file {status['spill_file_bytes'] >> 20} MiB"]
    for e in status["exports"]:
        lines.append(f"  export {e['name']}: {e['size']} bytes")
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
    lines.append(f"    side store: {s['side_memory_bytes']} bytes in memory, {s['side_spill_bytes']} spilled"
                 f" (peak {s['side_peak_bytes']}){', under pressure' if s['pressure'] else ''}")
    lines.append(f"    copy-before-write: {s['chunks_cow']} chunks; copied {s['released_bytes'] >> 20} MiB"
                 f" at {s['rate_bytes_per_s'] / (1 << 20):.1f} MiB/s")
    c = s.get("copier")
    if c:
        lines.append(f"    copier: {c['chunks_in_order']} chunks in order, {c['chunks_ahead']} ahead of order, "
                     f"{c['chunks_opportunistic']} opportunistically; {c['spilled_bytes']} bytes spilled, "
                     f"host buffer peak {c['peak_host_buffer_bytes']}")
    return "\n".join(lines)
