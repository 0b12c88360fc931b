"""`--dataset NAME=SPEC`: the syntax, parsed and checked on its own (no subsystem needed).

    EXPORT                    the whole export
    EXPORT:START-END          bytes START up to END (exclusive)
    EXPORT:START+LENGTH       LENGTH bytes from START
    EXPORT:pN                 partition N of the export's GPT or MBR, at time zero
    concat:E1,E2[,...]        a linear volume: the exports back to back
    stripe:CHUNK:E1,E2[,...]  a striped volume (dm-striped, md RAID0)

Sizes take K/M/G/T suffixes (powers of 1024); every offset, length and CHUNK is a
multiple of 512. What needs the exports' sizes (ranges within the export, legs
big enough) is checked by plan.py, still before anything is frozen.
"""

import re
from typing import NamedTuple

from backupformat import dataset_name_problem
from common import units
from controller.errors import UsageError

SECTOR = 512
_PARTITION = re.compile(r"p([1-9][0-9]{0,2})")


class DatasetSpec(NamedTuple):
    name: str
    text: str  # the SPEC as given, kept in the stream header
    kind: str  # "export", "range", "partition", "concat" or "stripe"
    exports: tuple[str, ...]
    start: int = 0  # range: first byte
    length: int = 0  # range: byte count
    partition: int = 0  # partition: its number, from 1
    chunk: int = 0  # stripe: the stripe chunk in bytes


def parse_dataset(arg: str) -> DatasetSpec:
    """NAME=SPEC -> DatasetSpec; UsageError naming the argument if it is malformed."""
    name, sep, text = arg.partition("=")
    if not sep or not text:
        raise UsageError(f"--dataset {arg!r}: expected NAME=SPEC, e.g. root=disk1:p2")
    problem = dataset_name_problem(name)
    if problem:
        raise UsageError(f"--dataset {arg!r}: {problem}")
    try:
        return _parse_spec(name, text)
    except UsageError as e:
        raise UsageError(f"--dataset {arg!r}: {e.message}") from None


def _parse_spec(name: str, text: str) -> DatasetSpec:
    kind, colon, rest = text.partition(":")
    if kind == "concat":
        return DatasetSpec(name, text, "concat", _export_list(rest, "concat", minimum=2))
    if kind == "stripe":
        chunk_text, sep, legs = rest.partition(":")
        if not sep:
            raise UsageError("expected stripe:CHUNK:E1,E2[,...]")
        chunk = _aligned(chunk_text, "stripe chunk")
        if chunk == 0:
            raise UsageError("the stripe chunk must not be 0")
        return DatasetSpec(name, text, "stripe", _export_list(legs, "stripe", minimum=2), chunk=chunk)
    export = _export_name(kind)
    if not colon:  # the whole export
        return DatasetSpec(name, text, "export", (export,))
    m = _PARTITION.fullmatch(rest)
    if m:
        return DatasetSpec(name, text, "partition", (export,), partition=int(m.group(1)))
    if "+" in rest:
        start_text, _, length_text = rest.partition("+")
        start, length = _aligned(start_text, "start"), _aligned(length_text, "length")
    elif "-" in rest:
        start_text, _, end_text = rest.partition("-")
        start, end = _aligned(start_text, "start"), _aligned(end_text, "end")
        if end <= start:
            raise UsageError(f"the range ends at {end}, not after its start {start}")
        length = end - start
    else:
        raise UsageError(f"{rest!r} is not START-END, START+LENGTH or pN")
    if length == 0:
        raise UsageError("the range is empty")
    return DatasetSpec(name, text, "range", (export,), start=start, length=length)


def _export_name(text: str) -> str:
    if not text or any(c in text for c in ",:=@ /"):
        raise UsageError(f"{text!r} is not an export name")
    return text


def _export_list(text: str, kind: str, minimum: int) -> tuple[str, ...]:
    names = tuple(_export_name(t) for t in text.split(","))
    if len(names) < minimum:
        raise UsageError(f"a {kind} needs at least {minimum} exports")
    if len(set(names)) != len(names):
        raise UsageError(f"a {kind} names an export twice")
    return names


def _aligned(text: str, what: str) -> int:
    try:
        value = units.parse_size(text, what)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if value % SECTOR:
        raise UsageError(f"{what} {text} is not a multiple of {SECTOR} bytes")
    return value
