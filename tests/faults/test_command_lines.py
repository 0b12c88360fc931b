"""Malformed command lines by the hundred, generated from the specs: the options every
subcommand's parser declares (each required one dropped, each value left out, each typed
or choice value wrong, unknown options, stray words) and the grammars users type (sizes,
dataset specs, export specs, NBD URIs and device names, compression). Application: none is
touched: every line is refused before anything is asked of a subsystem or a device.
Backup: none is made or damaged. Each line: the documented exit status (2 for usage; 1, 3 or
4 where the docs say, e.g. a missing backup file), exactly one line on stderr, no traceback."""

import argparse
import os
import signal

import pytest

from controller.cli.args import integer
from controller.cli.main import build_parser

from backup_samples import write_backup
from faultkit import tzero_main_in_process

D = "{d}"  # the case's directory, filled in at run time
BACKUP = "{d}/b.tzb"  # a small valid backup there
MISSING_CTL = "{d}/none.ctl"

# A line each subcommand would accept in form (what it names need not exist); the mutations
# below break one thing in it at a time.
VALID = {
    "serve": ["serve", "--control", f"{D}/c.ctl", "--socket", f"{D}/n.sock", f"a={D}/missing.img"],
    "backup": ["backup", "-s", MISSING_CTL, "-o", f"{D}/out.tzb"],
    "restore": ["restore", BACKUP, "--to", f"{D}/restored"],
    "verify": ["verify", BACKUP],
    "ls": ["ls", BACKUP],
    "status": ["status", MISSING_CTL],
    "serve-backup": ["serve-backup", f"{D}/missing.tzb", "--socket", f"{D}/b.sock"],
    "attach": ["attach", f"nbd+unix:///a?socket={D}/none.sock"],
    "detach": ["detach", "/dev/nbd0"],
    "consolidate": ["consolidate", BACKUP, "-o", f"{D}/full.tzb"],
    "certs": ["certs", f"{D}/pki", "--host", "localhost"],
}

BAD_SIZES = ["", "abc", "-1", "1.5.2", "12Q", "0.3K", "K", "1e3", "1KK", " ", "1 2", "0x10", "½", "١٢", "nan",
             "1..5M", "+5M", "5M5", "M5"]
BAD_INTS = ["", "x", "1.5", "0x10", "1e3", "--", "١٢"]
BAD_DATASET_NAMES = ["", ".", "..", "a/b", "a\x01b", "x" * 256]
BAD_SPECS = ["", ":", "e:", "e:p0", "e:p1000", "e:pX", "e:1-1", "e:2K-1K", "e:1+0", "e:511+512", "e:0+511",
             "e:1K-", "e:-1K", "e:x-1K", "e:0-1Q", "concat:", "concat:a", "concat:a,a", "concat:a,,b", "stripe:",
             "stripe:64K", "stripe:0:a,b", "stripe:100:a,b", "stripe:64K:a", "stripe:xx:a,b", "stripe:64K:a,a",
             "e@x", "e,f", "e/x", "e=x", "e:p1:p2", "e:1K+1K+1K", "e:1K-2K-3K"]
BAD_EXPORT_SPECS = ["noequals", "=x", "bad name=x", "a@b=x", "a=", f"{'n' * 65}=x", ".a=x", "a:b=x", "a/b=x"]
BAD_URIS = ["", "nbd+unix://", "nbd+unix:///a", "nbd+unix:///a?socket=", "nbd+unix://host/a?socket=/s", "nbd://",
            "nbds://h/a", "nbds+unix:///a?socket=/s", "http://h/a", "nbd+vsock:///a", "nbd://h:99999/a",
            "nbd://h/a?x=1", "nbd+unix:///a?socket=/s&socket=/t", "/dev/nbd0", "nbd:h/a",
            "nbd+unix:///" + "x" * 5000 + "?socket=/s"]
BAD_DEVICES = ["", "/dev/sda", "nbd", "nbdx", "/dev/nbd-1", "/dev/nbd0p1", "nbd0 ", "/dev//nbd0x"]
BAD_COMPRESS = ["gzip", "zstd:0", "zstd:23", "zstd:x", "zstd:", "zstd:3:4", "", "none:1", "ZSTD", "zstd:-1"]


def subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def option_value_index(line: list[str], option: str) -> int | None:
    return line.index(option) + 1 if option in line else None


def generated() -> list[tuple[str, list[str], set[int]]]:
    """(id, argv, the exit statuses the docs allow)."""
    lines: list[tuple[str, list[str], set[int]]] = []
    usage = {2}

    def add(name: str, argv: list[str], allowed: set[int] = usage) -> None:
        lines.append((name, argv, allowed))

    add("no command", [])
    add("unknown command", ["launch"])
    add("debug alone", ["--debug"])
    add("unknown global option", ["--bogus", "verify", BACKUP])
    for command, parser in subparsers().items():
        valid = VALID[command]
        add(f"{command}: unknown option", [*valid, "--bogus"])
        add(f"{command}: unknown option with a value", [*valid, "--bogus=1"])
        add(f"{command}: stray word", [*valid, "stray", "words"] if command != "serve" else [*valid[:-1], "--x"])
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            flag = action.option_strings[-1] if action.option_strings else None
            if action.required or (not action.option_strings and action.nargs not in ("?", "*")):
                if flag and flag in valid:
                    i = valid.index(flag)
                    add(f"{command}: {flag} left out", valid[:i] + valid[i + 2:])
                elif not flag:
                    add(f"{command}: {action.dest} left out", [command])
            if flag and action.nargs != 0 and not isinstance(action, argparse._StoreTrueAction):
                add(f"{command}: {flag} without its value", [*valid, flag])
                if action.type in (int, integer):
                    for bad in BAD_INTS:
                        add(f"{command}: {flag} {bad!r}", [*valid, flag, bad])
                if action.choices:
                    add(f"{command}: {flag} not one of its choices", [*valid, flag, "sideways"])
                if action.metavar == "SIZE":
                    for bad in BAD_SIZES:
                        add(f"{command}: {flag} {bad!r}", [*valid, flag, bad])
    backup = VALID["backup"]
    for name in BAD_DATASET_NAMES:
        add(f"backup: dataset name {name!r}", [*backup, "--dataset", f"{name}=e"])
    for spec in BAD_SPECS:
        add(f"backup: dataset spec {spec!r}", [*backup, "--dataset", f"d={spec}"])
    add("backup: dataset without =", [*backup, "--dataset", "d"])
    add("backup: dataset name twice", [*backup, "--dataset", "d=e", "--dataset", "d=f"])
    for text in BAD_COMPRESS:
        add(f"backup: --compress {text!r}", [*backup, "--compress", text])
    for option, value in (("--freeze-deadline", "0"), ("--freeze-deadline", "30001"), ("--freeze-deadline", "-5"),
                          ("--freeze-deadline", "1" + "0" * 400), ("--lease", "99"), ("--lease", "120001"),
                          ("--lease", "1" + "0" * 30)):
        add(f"backup: {option} {value[:12]}", [*backup, option, value])
    for out in (D, f"{D}/missing/out.tzb", f"{D}/b.tzb", "/dev/loop0" if os.path.exists("/dev/loop0") else D):
        add(f"backup: -o {out}", ["backup", "-s", MISSING_CTL, "-o", out])
    add("backup: -s twice", ["backup", "-s", MISSING_CTL, "-s", MISSING_CTL, "-o", f"{D}/o.tzb"])
    add("backup: --spill-dir missing", [*backup, "--spill-dir", f"{D}/missing"])
    add("backup: --spill-dir a file", [*backup, "--spill-dir", BACKUP])
    add("backup: --host-memory too small", [*backup, "--host-memory", "4K"], {2, 3})
    add("backup: unreachable subsystem", backup, {3})
    serve = VALID["serve"]
    for spec in BAD_EXPORT_SPECS:
        add(f"serve: export {spec!r}", [*serve[:-1], spec])
    add("serve: export twice", [*serve, f"a={D}/b.tzb"])
    add("serve: export is a directory", [*serve[:-1], f"a={D}"])
    add("serve: export missing", serve)
    for chunk in ("3K", "0", "32M", "1K", "64K1"):
        add(f"serve: --chunk {chunk}", [*serve[:-1], "--chunk", chunk, f"a={BACKUP}"])
    for port in ("0", "65536", "-1", "99999999999"):
        add(f"serve: --port {port}", ["serve", "--control", f"{D}/c.ctl", "--port", port, f"a={BACKUP}"])
    add("serve: --socket and --port", [*serve[:-1], "--port", "10809", f"a={BACKUP}"])
    add("serve: --control in a missing directory", ["serve", "--control", f"{D}/missing/c.ctl", f"a={BACKUP}"])
    add("serve: --control is a file", ["serve", "--control", BACKUP, "--socket", f"{D}/n.sock", f"a={BACKUP}"])
    add("serve: --side-dir missing", [*serve[:-1], "--side-dir", f"{D}/missing", f"a={BACKUP}"])
    add("serve: --side-memory huge", [*serve[:-1], "--side-memory", "9" * 40 + "P", f"a={D}/missing.img"])
    for port in ("0", "65536"):
        add(f"serve-backup: --port {port}", ["serve-backup", BACKUP, "--port", port])
    add("serve-backup: stdin", ["serve-backup", "-"])
    add("serve-backup: missing file", VALID["serve-backup"], {1})
    add("serve-backup: not a backup", ["serve-backup", f"{D}/junk", "--socket", f"{D}/b.sock"], {4})
    for uri in BAD_URIS:
        add(f"attach: {uri[:40]!r}", ["attach", uri])
    for dev in BAD_DEVICES:
        add(f"attach: --device {dev!r}", [*VALID["attach"], "--device", dev])
        add(f"detach: {dev!r}", ["detach", dev])
    restore = VALID["restore"]
    for name in ("zz", "", "a/b"):
        add(f"restore: --dataset {name!r}", [*restore, "--dataset", name])
    add("restore: --to a file without --dataset", ["restore", BACKUP, "--to", BACKUP])
    add("restore: --to a URI without --dataset", ["restore", BACKUP, "--to", f"nbd+unix:///a?socket={D}/s"])
    for uri in BAD_URIS[1:8]:
        add(f"restore: --to {uri[:30]!r}", [*restore[:-1], "--dataset", "a", "--to", uri], {1, 2})
    for command in ("restore", "verify", "ls"):
        to = ["--to", f"{D}/r"] if command == "restore" else []
        add(f"{command}: a missing backup", [command, f"{D}/missing.tzb", *to], {1})
        if command != "ls":  # ls of a folder lists the backups in it
            add(f"{command}: a directory", [command, D, *to], {1})
        add(f"{command}: not a backup", [command, f"{D}/junk", *to], {4})
        add(f"{command}: an empty file", [command, f"{D}/empty", *to], {4})
    add("status: a file that is no socket", ["status", BACKUP], {3})
    add("status: a missing directory", ["status", f"{D}/missing/c.ctl"], {3})
    return lines


LINES = generated()


def test_command_lines_number_in_the_hundreds():
    assert len(LINES) >= 300, len(LINES)
    assert {argv[0] for _, argv, _ in LINES if argv} >= set(VALID), "every subcommand"


@pytest.fixture
def staged(case):
    write_backup(case.dir / "b.tzb")
    (case.dir / "junk").write_bytes(b"not a backup at all" * 100)
    (case.dir / "empty").write_bytes(b"")
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    yield case
    for s, h in handlers.items():
        signal.signal(s, h)


@pytest.mark.parametrize("argv, allowed", [(argv, allowed) for _, argv, allowed in LINES],
                         ids=[name for name, _, _ in LINES])
def test_malformed_command_line(staged, capsys, argv, allowed):
    case = staged
    before = sorted(os.listdir(case.dir))
    line = [a.replace(D, str(case.dir)) for a in argv]
    code, out, err = tzero_main_in_process(line, capsys)
    case.tally.commands += 1
    case.note(out, err)
    lines = err.strip().splitlines()
    assert code in allowed, f"exit {code}: {err}"
    assert len(lines) == 1 and lines[0].startswith("tzero: ") and "Traceback" not in err, err
    assert sorted(os.listdir(case.dir)) == before, "a refused command leaves nothing behind"
    case.finish()
