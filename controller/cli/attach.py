"""tzero attach: an NBD export becomes a kernel block device /dev/nbdN."""

import argparse

from controller.cli.args import Subparsers, command
from controller.nbd.kernel import attach
from controller.nbd.uri import parse_device, parse_uri

DESCRIPTION = """\
Connect to an NBD export, negotiate it, and hand the connection to the kernel's NBD
driver: the export becomes a block device /dev/nbdN, which it prints. The device stays
attached after tzero exits, until tzero detach. Needs root and the nbd kernel module
(modprobe nbd)."""

EXAMPLES = (
    ("tzero attach 'nbd+unix:///vm1?socket=/run/s1.sock'", "a live export as /dev/nbdN"),
    ("tzero attach --read-only --device /dev/nbd3 'nbd+unix:///db?socket=/run/b.sock'",
     "a dataset of a served backup, read-only, as /dev/nbd3"),
)


def register(subparsers: Subparsers) -> None:
    p = command(subparsers, "attach", summary="attach an NBD export as /dev/nbdN (kernel NBD, needs root)",
                description=DESCRIPTION, examples=EXAMPLES)
    p.add_argument("uri", metavar="NBD-URI",
                   help="'nbd+unix:///EXPORT?socket=PATH' or nbd://HOST[:PORT]/EXPORT")
    p.add_argument("--device", metavar="/dev/nbdN",
                   help="the device to use (default: the kernel picks a free one)")
    p.add_argument("--read-only", action="store_true",
                   help="attach read-only: the kernel refuses writes to the device")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    index = parse_device(args.device) if args.device is not None else None
    index = attach(parse_uri(args.uri), index=index, read_only=args.read_only)
    print(f"/dev/nbd{index}")
    return 0
