"""tzero detach: disconnect a kernel NBD device that tzero attach (or anything) set up."""

import argparse

from controller.cli.args import Subparsers
from controller.nbd.kernel import detach
from controller.nbd.uri import parse_device


def register(subparsers: Subparsers) -> None:
    p = subparsers.add_parser(
        "detach", help="disconnect /dev/nbdN (kernel NBD, needs root)",
        description="Disconnect a kernel NBD device. Unmount it first: a device still open "
                    "stays until its last user closes it.")
    p.add_argument("device", metavar="/dev/nbdN")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    detach(parse_device(args.device))
    return 0
