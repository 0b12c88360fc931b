"""The `tzero` command: argument parsing, dispatch, and the one place errors become exit codes.

Each subcommand lives in its own module controller/cli/<name>.py exposing
`register(subparsers)`, which adds its parser and sets `func(args) -> int`.
"""

import argparse
import importlib
import sys

from controller import __version__
from controller.errors import EXIT_FAILURE, EXIT_USAGE, TzeroError

COMMANDS = ["serve", "backup", "restore", "verify", "ls", "status", "serve-backup", "attach", "detach"]


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(EXIT_USAGE, f"tzero: {message}\n")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser with every subcommand, or with ONLY that one: each command imports what it
    needs (libnbd, pyroute2, ...), which costs seconds in a VM guest, so a call pays for its own."""
    parser = _Parser(prog="tzero", description="Time-zero backups of live NBD exports.")
    parser.add_argument("--version", action="version", version=f"tzero {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name in [only] if only else COMMANDS:
        importlib.import_module(f"controller.cli.{name.replace('-', '_')}").register(sub)
    return parser


def _command_in(argv: list[str]) -> str | None:
    words = [a for a in argv if not a.startswith("-")]
    return words[0] if words and words[0] in COMMANDS else None


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(_command_in(argv))
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except TzeroError as e:
        if args.debug:
            raise
        print(f"tzero: {e.message}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("tzero: interrupted", file=sys.stderr)
        return EXIT_FAILURE
    except OSError as e:
        if args.debug:
            raise
        where = f": {e.filename}" if e.filename else ""
        print(f"tzero: {e.strerror or e}{where}", file=sys.stderr)
        return EXIT_FAILURE
