"""What every command's parser shares: usage errors, help with examples, global options,
settings that may come from the environment or the config file, sizes and durations.

A command module's register(subparsers) calls command() for its parser, then adds its
options; an option that admins set once for a host (a subsystem list, a memory bound,
where spill files go) is added with setting() instead, so that main.py fills it from
TZERO_<KEY> or the config file when the command line leaves it out (settings.py).
"""

import argparse
import re
from dataclasses import dataclass
from typing import Any, NoReturn, TypeAlias

from common import units
from controller.errors import EXIT_STATUSES, EXIT_USAGE, SIGNAL_STATUS, UsageError

# What main.py hands to every command's register(): add_parser makes its ArgumentParser.
# A string: the class is generic to type checkers only.
Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"

PROG = "tzero"


@dataclass(frozen=True)
class Setting:
    """An option whose value may come from the command line, the environment or the config file."""

    dest: str  # the argparse attribute
    key: str  # its name in the config file, e.g. host-memory
    flag: str  # how messages name it, e.g. --host-memory
    default: str | None  # as a user would type it; None: no default (required or optional)
    is_list: bool = False  # several values: repeated on the command line, space-separated elsewhere
    also_env: tuple[str, ...] = ()  # more variables read after the first, in order

    @property
    def env(self) -> tuple[str, ...]:
        """The environment variables read for it, first wins: TZERO_<KEY>, then also_env."""
        return ("TZERO_" + self.key.upper().replace("-", "_"), *self.also_env)


class TzeroParser(argparse.ArgumentParser):
    """An ArgumentParser whose mistakes are usage errors (one line, exit 2), that keeps its
    command's summary, examples and settings for --help, the man page and settings.py."""

    def __init__(self, *args: Any, summary: str = "", examples: tuple[tuple[str, str], ...] = (),
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.summary = summary
        self.examples = examples
        self.settings: list[Setting] = []

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{PROG}: {message} (see {self.prog} --help)\n")


def global_options(parser: argparse.ArgumentParser, on_command: bool) -> None:
    """--debug, -q, -v, --config: on the top parser with their defaults, and again on every command
    (ON_COMMAND) with no default, so they work before or after the command's name."""
    default: dict[str, Any] = {"default": argparse.SUPPRESS} if on_command else {}
    g = parser.add_argument_group("global options (before or after the command)")
    g.add_argument("--debug", action="store_true", help="show the traceback of an error", **default)
    level = g.add_mutually_exclusive_group()
    level.add_argument("-q", "--quiet", action="store_true",
                       help="say nothing on success: no progress, no summary (errors are still said; "
                            "--json still prints)", **default)
    level.add_argument("-v", "--verbose", action="store_true",
                       help="say more: per-export details, nbdkit's debug messages for serve", **default)
    g.add_argument("--config", metavar="FILE",
                   help="read defaults from FILE instead of $TZERO_CONFIG or /etc/tzero.conf", **default)


def command(subparsers: Subparsers, name: str, *, summary: str, description: str,
            examples: tuple[tuple[str, str], ...]) -> TzeroParser:
    """The parser of command NAME: SUMMARY in `tzero --help`, DESCRIPTION and EXAMPLES
    ((command line, what it does), ...) in its --help and man page, the exit statuses after."""
    p = subparsers.add_parser(name, help=summary, description=description, epilog=epilog(examples),
                              formatter_class=argparse.RawDescriptionHelpFormatter,
                              summary=summary, examples=examples)
    assert isinstance(p, TzeroParser), "main.py makes subparsers with parser_class=TzeroParser"
    global_options(p, on_command=True)
    p.set_defaults(parser=p)
    return p


def epilog(examples: tuple[tuple[str, str], ...]) -> str:
    lines = ["examples:"]
    for line, what in examples:
        lines += [f"  {line}", f"      {what}"]
    return "\n".join(lines) + "\n\n" + exit_status_text()


def exit_status_text() -> str:
    """The exit statuses, as every --help shows them."""
    return "exit status:\n" + "\n".join(f"  {code:<3} {meaning}" for code, meaning in EXIT_STATUSES.items()) \
        + f"\n  {SIGNAL_STATUS}"


def setting(parser: TzeroParser | argparse._ActionsContainer, *flags: str, key: str, default: str | None, help: str,
            is_list: bool = False, also_env: tuple[str, ...] = (), shown_default: str | None = None,
            **kwargs: Any) -> None:
    """Add an option that settings.py may fill from the environment or the config file. Its
    argparse default is None (or [] for a positional list), so main can tell it was not given;
    its help says the default (DEFAULT, or SHOWN_DEFAULT when the command works it out) and
    the variables."""
    s = Setting(kwargs.get("dest") or flags[-1].lstrip("-").replace("-", "_"), key, flags[-1], default, is_list,
                also_env)
    owner = parser if isinstance(parser, TzeroParser) else getattr(parser, "_tzero_parser", None)
    assert isinstance(owner, TzeroParser), "a group's settings need the group made by group()"
    owner.settings.append(s)
    shown = default if default is not None else shown_default
    said = f"default {shown}; " if shown is not None else ""
    envs = ", ".join(f"${e}" for e in s.env)
    help = f"{help} ({said}{envs})"
    if not flags[0].startswith("-"):  # a positional list: nothing given is []
        parser.add_argument(*flags, **kwargs, nargs="*", help=help)
    else:
        parser.add_argument(*flags, **kwargs, default=None, action="append" if is_list else "store", help=help)


def exclusive_group(parser: TzeroParser) -> argparse._MutuallyExclusiveGroup:
    """A mutually exclusive group of PARSER that setting() can add to."""
    group = parser.add_mutually_exclusive_group()
    group._tzero_parser = parser  # type: ignore[attr-defined]
    return group


def parse_size(text: str, what: str = "size") -> int:
    """Bytes for TEXT (common/units.py's grammar: 64K, 512MiB, 1.5G); UsageError if it is not one."""
    try:
        return units.parse_size(text, what)
    except ValueError as e:
        raise UsageError(str(e)) from None


def parse_duration(text: str, what: str = "duration") -> int:
    """Milliseconds for TEXT (500ms, 2s, 1m; a plain number is milliseconds); UsageError if not one."""
    try:
        return units.parse_duration(text, what)
    except ValueError as e:
        raise UsageError(str(e)) from None


def integer(text: str) -> int:
    """An argparse type: a whole number in ASCII digits, optionally negative (what `int` would
    also take, like Arabic-Indic digits, underscores or spaces, is refused)."""
    if not re.fullmatch(r"-?[0-9]+", text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number")
    return int(text)
