"""Helpers shared by the VM test modules (fixtures live in conftest.py)."""

import datetime
import json
import os
import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from vm.guest import Guest, Verdict  # noqa: E402

# Shell lines for guest scripts: `tz ARGS` runs this checkout's tzero with the host's
# virtualenv python, which the guest sees through the 9p root at the same path; `try NAME
# CMD...` runs CMD and prints the marker "NAME <status> <output, newlines as |>".
VENV_PYTHON = REPO / ".venv" / "bin" / "python"
PYTHON = str(VENV_PYTHON) if VENV_PYTHON.exists() else sys.executable
SHELL_PRELUDE = f"""
tz() {{ PYTHONPATH={REPO} {PYTHON} -m controller "$@"; }}
try() {{
    name=$1; shift
    out=$("$@" 2>&1); rc=$?
    printf '@@tzero %s %s %s\\n' "$name" "$rc" "$(printf '%s' "$out" | tr '\\n' '|')"
}}
"""
GUEST_TIMEOUT = float(os.environ.get("TZERO_VM_TIMEOUT", "180"))


def guest(script: str, job_dir, **kwargs) -> Guest:
    """A Guest with the suite's time budget (TZERO_VM_TIMEOUT, default 180 s)."""
    kwargs.setdefault("timeout", GUEST_TIMEOUT)
    return Guest(script, job_dir=job_dir, **kwargs)


def check(verdict: Verdict) -> Verdict:
    """Fail with the console tail unless the guest script exited 0."""
    if verdict.status != 0:
        tail = "\n".join(verdict.log.replace("\r", "").splitlines()[-40:])
        pytest.fail(f"guest script exited {verdict.status}; console tail:\n{tail}")
    return verdict


def wait_for_socket_sh(path: str) -> str:
    """Shell lines that wait up to 20 s for a unix socket (nbdkit -P returns early)."""
    return (f"i=0; while [ ! -S {path} ] && [ $i -lt 200 ]; do sleep 0.1; i=$((i+1)); done\n"
            f"[ -S {path} ] || {{ echo 'no socket {path}'; exit 90; }}\n")


def wait_for_file_sh(path: str, seconds: int) -> str:
    """Shell lines that wait up to SECONDS for PATH to exist, else exit 91."""
    return (f"i=0; while [ ! -e {path} ] && [ $i -lt {seconds * 10} ]; do sleep 0.1; i=$((i+1)); done\n"
            f"[ -e {path} ] || {{ echo 'no {path} after {seconds} s'; exit 91; }}\n")


def last_json(text: str) -> dict:
    """The JSON object on the last line of TEXT (`tzero ... --json` prints it last)."""
    return json.loads(text.strip().splitlines()[-1])


def iso_epoch(text: str) -> float:
    """Epoch seconds of an ISO 8601 time with its offset (a backup's time_zero)."""
    return datetime.datetime.fromisoformat(text).timestamp()


# What a guest kernel logs when a block device fails a request or ext4 finds damage.
_IO_ERROR = re.compile(r"I/O error|blk_update_request|EXT4-fs error|EXT4-fs warning|"
                       r"Buffer I/O error|critical medium error|Aborting journal|"
                       r"\bnbd\d*: .*(?:timed out|Receive control failed|Send control failed)")


def io_errors(dmesg_path) -> list[str]:
    """The lines of a saved guest `dmesg` that tell of failed I/O or filesystem errors."""
    return [line for line in Path(dmesg_path).read_text(errors="replace").splitlines()
            if _IO_ERROR.search(line)]
