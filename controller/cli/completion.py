"""Shell completion made from the command line's own parser, by shtab: a static script,
so pressing TAB runs no Python.

    python -m controller.cli.completion bash > tzero.bash

shtab is needed only to make the script (make setup has it), never to run tzero.
"""

import argparse
import sys

from controller.cli.main import build_parser
from controller.cli.manpage import subparsers

# Values completed as paths: the metavars that name files, folders and sockets.
FILE_METAVARS = {"BACKUP", "BACKUP|DIR", "FILE", "CTL", "SOCK", "NAME=PATH", "DIR|PATH|NBD-URI", "/dev/nbdN"}
DIR_METAVARS = {"DIR"}


def script(shell: str) -> str:
    import shtab

    parser = build_parser()
    for p in [parser, *subparsers(parser).values()]:
        _mark_paths(p, shtab)
    return str(shtab.complete(parser, shell=shell))


def _mark_paths(parser: argparse.ArgumentParser, shtab: object) -> None:
    for action in parser._actions:
        metavar = action.metavar if isinstance(action.metavar, str) else None
        if metavar in DIR_METAVARS:
            action.complete = shtab.DIRECTORY  # type: ignore[attr-defined]
        elif metavar in FILE_METAVARS:
            action.complete = shtab.FILE  # type: ignore[attr-defined]


if __name__ == "__main__":
    sys.stdout.write(script(sys.argv[1] if len(sys.argv) > 1 else "bash"))
