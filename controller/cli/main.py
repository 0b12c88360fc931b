"""The `tzero` command: argument parsing, dispatch, and the one place errors become exit codes.

Each subcommand lives in its own module controller/cli/<name>.py exposing
`register(subparsers)`, which adds its parser (args.command) and sets `func(args) -> int`.
"""

import argparse
import importlib
import sys

from common.objectstore import StoreError
from common.units import DURATION_GRAMMAR, SIZE_GRAMMAR
from controller import __version__, signals
from controller.cli import settings
from controller.cli.args import PROG, TzeroParser, epilog, global_options
from controller.errors import EXIT_BUG, EXIT_FAILURE, TzeroError, store_error

COMMANDS = ["serve", "backup", "restore", "verify", "ls", "status", "serve-backup", "consolidate", "attach", "detach",
            "certs"]

DESCRIPTION = f"""\
Time-zero backups of live block devices served over NBD.

A storage subsystem (tzero serve) serves block devices or image files as NBD exports
to applications; tzero backup takes, across one or more subsystems, a backup that
equals what every export held at one instant, while the applications keep writing
(they are held for milliseconds). The other commands read, check, list, restore and
serve backups. Every command has its own --help and man page (tzero-COMMAND(1)).

A SIZE is {SIZE_GRAMMAR}.
A DURATION is {DURATION_GRAMMAR}.
Options marked with $TZERO_... may also be set in the environment or in the config
file (/etc/tzero.conf or $TZERO_CONFIG); the command line wins over both."""

EXAMPLES = (
    ("tzero serve --control /run/s1.ctl --socket /run/s1.sock vm1=/dev/vg/vm1",
     "serve a logical volume as export vm1 (in the foreground)"),
    ("tzero backup -s /run/s1.ctl -o nightly.tzb", "back up every export of that subsystem"),
    ("tzero restore nightly.tzb --to /srv/restored", "restore every dataset as /srv/restored/NAME.img"),
)


def build_parser(only: str | None = None) -> TzeroParser:
    """The parser with every subcommand, or with ONLY that one: each command imports what it
    needs (libnbd, pyroute2, ...), which is slow in a VM guest, so a call pays for its own."""
    parser = TzeroParser(prog=PROG, description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter,
                         epilog=epilog(EXAMPLES), summary="time-zero backups of live block devices served over NBD",
                         examples=EXAMPLES)
    parser.add_argument("--version", action="version", version=f"tzero {__version__}")
    global_options(parser, on_command=False)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=TzeroParser,
                                title="commands")
    for name in [only] if only else COMMANDS:
        importlib.import_module(f"controller.cli.{name.replace('-', '_')}").register(sub)
    return parser


def _command_in(argv: list[str]) -> str | None:
    """The command ARGV names: its first word that is neither an option nor --config's value."""
    words = iter(argv)
    for word in words:
        if word == "--config":
            next(words, None)
        elif not word.startswith("-"):
            return word if word in COMMANDS else None
    return None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(_command_in(argv))
    args = parser.parse_args(argv)
    signals.install()
    try:
        settings.apply(args, args.parser, COMMANDS)
        try:
            return int(args.func(args))
        except StoreError as e:  # translated where it happens; one that escapes still gets its status
            raise store_error(e) from None
    except TzeroError as e:
        if args.debug:
            raise
        print(f"tzero: {e.message}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt as e:  # SIGINT, SIGTERM, SIGHUP: controller/signals.py
        print(f"tzero: {e if isinstance(e, signals.Interrupted) else 'interrupted'}", file=sys.stderr)
        return signals.exit_status(e)
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
