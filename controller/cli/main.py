"""The `tzero` command: argument parsing, dispatch, and the one place errors become exit codes.

Each subcommand lives in its own module controller/cli/<name>.py exposing
`register(subparsers)`, which adds its parser and sets `func(args) -> int`.
"""

import argparse
import importlib
import sys
from typing import NoReturn

from controller import __version__
from controller.errors import EXIT_BUG, EXIT_FAILURE, EXIT_STATUSES, EXIT_USAGE, TzeroError

COMMANDS = ["serve", "backup", "restore", "verify", "ls", "status", "serve-backup", "attach", "detach"]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"tzero: {message}\n")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser with every subcommand, or with ONLY that one: each command imports what it
    needs (libnbd, pyroute2, ...), which is slow in a VM guest, so a call pays for its own."""
    parser = _Parser(prog="tzero", description="Time-zero backups of live NBD exports.",
                     epilog=exit_status_text(), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"tzero {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name in [only] if only else COMMANDS:
        importlib.import_module(f"controller.cli.{name.replace('-', '_')}").register(sub)
    return parser


def exit_status_text() -> str:
    """The exit statuses, as every --help shows them."""
    return "exit status:\n" + "\n".join(f"  {code:<3} {meaning}" for code, meaning in EXIT_STATUSES.items())


def _command_in(argv: list[str]) -> str | None:
    words = [a for a in argv if not a.startswith("-")]
    return words[0] if words and words[0] in COMMANDS else None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(_command_in(argv))
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except TzeroError as e:
        if args.debug:
            raise
        print(f"tzero: {e.message}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("tzero: interrupted", file=sys.stderr)
        return EXIT_FAILURE
    except OSError as e:
        # Where an OS error can happen, the code says what it was doing (errors.os_error);
        # one that escapes that still gets one line with its path.
        if args.debug:
            raise
        where = f": {e.filename}" if e.filename else ""
        print(f"tzero: {e.strerror or e}{where}", file=sys.stderr)
        return EXIT_FAILURE
    except Exception as e:
        if args.debug:
            raise
        print(f"tzero: internal error: {type(e).__name__}: {e} (a bug in tzero; run it again with --debug "
              "to see the traceback)", file=sys.stderr)
        return EXIT_BUG
