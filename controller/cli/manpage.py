"""Man pages made from the command line's own parser: tzero(1) and tzero-COMMAND(1) for every
command, so a page never disagrees with --help.

    python -m controller.cli.manpage DIR     writes DIR/tzero.1, DIR/tzero-backup.1, ...

Hand-written rather than argparse-manpage: Debian 12's argparse-manpage (1.2.2) prints
options under their attribute names instead of their metavars (--host-memory HOST_MEMORY
for SIZE), leaves out the epilog where the examples and exit statuses are, and puts every
command in one page; what is needed here is one page per command with EXAMPLES, EXIT
STATUS, ENVIRONMENT and FILES sections, which is a few dozen lines on top of the parser.
"""

import argparse
import os
import sys

from controller import __version__
from controller.cli.args import PROG, TzeroParser
from controller.cli.main import COMMANDS, build_parser
from controller.errors import EXIT_STATUSES


def roff(text: str) -> str:
    """TEXT safe in a roff line: backslashes escaped, no line taken for a request, dashes as
    dashes (so they can be searched for and copied)."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join("\\&" + line if line[:1] in (".", "'") else line for line in text.split("\n"))


def paragraphs(text: str) -> list[str]:
    """TEXT's paragraphs (blank-line separated), each as one roff paragraph."""
    out = []
    for para in text.strip().split("\n\n"):
        out += [".PP", roff(" ".join(para.split()))]
    return out


def subparsers(parser: argparse.ArgumentParser) -> dict[str, TzeroParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return {name: p for name, p in action.choices.items() if isinstance(p, TzeroParser)}
    return {}


def invocation(action: argparse.Action) -> str:
    """'\\fB\\-s\\fR \\fICTL\\fR, \\fB\\-\\-subsystem\\fR \\fICTL\\fR', or '\\fIBACKUP\\fR' for a positional."""
    metavar = action.metavar if isinstance(action.metavar, str) else None
    if not action.option_strings:
        return f"\\fI{roff(metavar or action.dest)}\\fR"
    if action.nargs == 0:
        return ", ".join(f"\\fB{roff(o)}\\fR" for o in action.option_strings)
    value = metavar or (("{" + ",".join(map(str, action.choices)) + "}") if action.choices else action.dest.upper())
    return ", ".join(f"\\fB{roff(o)}\\fR \\fI{roff(value)}\\fR" for o in action.option_strings)


def options(parser: argparse.ArgumentParser) -> list[str]:
    lines = []
    for group in parser._action_groups:
        actions = [a for a in group._group_actions
                   if a.help != argparse.SUPPRESS and not isinstance(a, argparse._HelpAction | argparse._VersionAction
                                                                     | argparse._SubParsersAction)]
        if not actions:
            continue
        title = group.title or "options"
        lines.append(f".SS {roff(title[:1].upper() + title[1:])}")
        for a in actions:
            lines += [".TP", invocation(a), roff(" ".join((a.help or "").split()))]
    return lines


def page(name: str, parser: TzeroParser, commands: dict[str, TzeroParser]) -> str:
    """The man page of PARSER, named NAME (tzero or tzero-COMMAND)."""
    usage = "\n".join(line.strip() for line in parser.format_usage().removeprefix("usage:").strip().splitlines())
    lines = [f'.TH {name.upper()} 1 "" "{PROG} {__version__}" "tzero manual"', ".SH NAME",
             f"{name} \\- {roff(parser.summary)}", ".SH SYNOPSIS", ".nf", roff(usage), ".fi",
             ".SH DESCRIPTION", *paragraphs(parser.description or "")]
    if commands:
        lines.append(".SH COMMANDS")
        for cmd, p in commands.items():
            lines += [".TP", f"\\fB{roff(cmd)}\\fR", roff(p.summary) + f" (\\fB{PROG}\\-{roff(cmd)}\\fR(1))"]
    lines += [".SH OPTIONS", *options(parser)]
    if parser.examples:
        lines.append(".SH EXAMPLES")
        for line, what in parser.examples:
            lines += [".PP", roff(what) + ":", ".RS 4", ".nf", roff(line), ".fi", ".RE"]
    if parser.settings:
        lines.append(".SH ENVIRONMENT")
        for s in parser.settings:
            lines += [".TP", ", ".join(f"\\fB{e}\\fR" for e in s.env),
                      f"The default of \\fB{roff(s.flag)}\\fR; the command line wins over it. In the config "
                      f"file: \\fB{roff(s.key)}\\fR in section [{roff(name.removeprefix(PROG + '-'))}]."]
    lines += [".TP", "\\fBTZERO_CONFIG\\fR", "The config file to read instead of /etc/tzero.conf.",
              ".SH FILES", ".TP", "/etc/tzero.conf",
              "Defaults for the commands' settings, one INI section per command (docs/config.md); the "
              "environment and the command line win over it.",
              ".SH EXIT STATUS", ".TP"]
    for code, meaning in EXIT_STATUSES.items():
        lines += [f"\\fB{code}\\fR", roff(meaning), ".TP"]
    lines.pop()
    others = [f"\\fB{PROG}\\-{roff(c)}\\fR(1)" for c in COMMANDS if f"{PROG}-{c}" != name]
    lines += [".SH SEE ALSO", ", ".join(([f"\\fB{PROG}\\fR(1)"] if name != PROG else []) + others) + ","
              " \\fBnbdkit\\fR(1), \\fBnbdcopy\\fR(1), \\fBqemu\\-img\\fR(1)"]
    return "\n".join(lines) + "\n"


def pages() -> dict[str, str]:
    """File name -> content of every man page."""
    parser = build_parser()
    commands = subparsers(parser)
    out = {f"{PROG}.1": page(PROG, parser, commands)}
    for cmd, p in commands.items():
        out[f"{PROG}-{cmd}.1"] = page(f"{PROG}-{cmd}", p, {})
    return out


def write(directory: str) -> list[str]:
    os.makedirs(directory, exist_ok=True)
    written = []
    for filename, text in pages().items():
        path = os.path.join(directory, filename)
        with open(path, "w") as f:
            f.write(text)
        written.append(path)
    return written


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m controller.cli.manpage DIR")
    write(sys.argv[1])
