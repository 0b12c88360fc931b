"""tzero detach: disconnect a kernel NBD device that tzero attach (or anything) set up."""

import argparse

from controller.cli.args import Subparsers, command
from controller.nbd.kernel import detach
from controller.nbd.uri import parse_device

DESCRIPTION = """\
Disconnect a kernel NBD device that tzero attach (or nbd-client) set up. Unmount it
first: a device still open stays until its last user closes it. Needs root."""

EXAMPLES = (
    ("tzero detach /dev/nbd0", "disconnect /dev/nbd0"),
    ("umount /mnt/restore && tzero detach /dev/nbd3", "unmount, then disconnect"),
)


def register(subparsers: Subparsers) -> None:
    p = command(subparsers, "detach", summary="disconnect /dev/nbdN (kernel NBD, needs root)",
                description=DESCRIPTION, examples=EXAMPLES)
    p.add_argument("device", metavar="/dev/nbdN", help="the device to disconnect")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    detach(parse_device(args.device))
    return 0
