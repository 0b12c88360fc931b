"""Damaged backups: a bit flipped in every part of the format, the stream cut at every part,
bytes appended; plain and zstd. The backups are real ones (taken under writers, and proved
exact first). Application: not involved (its disks are not touched by reading a backup).
Backup: `tzero verify` and `tzero restore` refuse every damaged one with exit 4 and one line,
and a restore leaves no file behind; `tzero ls`, which reads only the header and the trailer,
either refuses (exit 4, one line) or shows only what the undamaged header says, and only
when the damage lies where ls does not read (records, index, digest)."""

import io
import json
import os

import pytest

from backupformat import StreamReader
from backupformat.spec import INDEX_ENTRY, INDEX_HEAD, RECORD_HEAD, TRAILER_SIZE

from faultkit import SUITE, Case, tzero_main_in_process

SIZE = 4 << 20


@pytest.fixture(scope="module")
def backups(tmp_path_factory):
    """A real backup of two exports under writers, plain and zstd: {codec: bytes}. Each is
    proved exact before it is damaged (that proof is a case of its own)."""
    case = Case(tmp_path_factory.mktemp("source"), "source backups")
    try:
        paths, initial = case.images(["a", "b"], SIZE)
        sub = case.serve("s", {"a": paths[0], "b": paths[1]}, "--chunk", "64K")
        load = case.load([(sub.socket, "a"), (sub.socket, "b")], paths, initial)
        made = {}
        for codec in ("none", "zstd"):
            out = case.dir / f"{codec}.tzb"
            proc = case.backup(out, "-s", sub.control, "--compress", codec, load=load)
            assert proc.returncode == 0, proc.stderr
            made[codec] = out
        case.finish()
        yield {codec: out.read_bytes() for codec, out in made.items()}
    finally:
        case.close()
        SUITE.add(case.tally)


def layout(blob: bytes) -> dict[str, int]:
    """Stream positions of every part of BLOB, named."""
    r = StreamReader(io.BytesIO(blob))
    index = r.read_index()
    trailer = r.read_trailer()
    header_length = int.from_bytes(blob[12:16], "little")
    first, last = index[0], index[len(index) - 1]
    middle = index[len(index) // 2]
    at = {
        "magic": 0, "magic end": 7, "format version": 8, "header length": 12,
        "header json start": 16, "header json middle": 16 + header_length // 2,
        "header json end": 16 + header_length - 1, "header check": 16 + header_length,
        "header check end": 16 + header_length + 15,
    }
    for name, e in (("first record", first), ("middle record", middle), ("last record", last)):
        p = e.position
        at |= {f"{name} tag": p, f"{name} codec": p + 4, f"{name} flags": p + 5, f"{name} reserved": p + 6,
               f"{name} dataset": p + 8, f"{name} length": p + 12, f"{name} offset": p + 16,
               f"{name} stored length": p + 24, f"{name} reserved2": p + 28,
               f"{name} payload start": p + RECORD_HEAD.size,
               f"{name} payload end": p + RECORD_HEAD.size + e.stored_length - 1,
               f"{name} check": p + RECORD_HEAD.size + e.stored_length}
    ip = trailer.index_position
    entries = ip + INDEX_HEAD.size
    end = len(blob)
    at |= {
        "index tag": ip, "index reserved": ip + 4, "index count": ip + 8,
        "first index entry dataset": entries, "first index entry codec": entries + 4,
        "first index entry offset": entries + 8, "first index entry length": entries + 16,
        "first index entry stored length": entries + 20, "first index entry position": entries + 24,
        "last index entry position": entries + (len(index) - 1) * INDEX_ENTRY.size + 24,
        "index check": entries + len(index) * INDEX_ENTRY.size,
        "trailer tag": end - TRAILER_SIZE, "trailer reserved": end - TRAILER_SIZE + 4,
        "trailer index position": end - TRAILER_SIZE + 8, "trailer record count": end - TRAILER_SIZE + 16,
        "trailer data bytes": end - TRAILER_SIZE + 24, "trailer stored bytes": end - TRAILER_SIZE + 32,
        "trailer check": end - TRAILER_SIZE + 40, "stream digest": end - TRAILER_SIZE + 56,
        "end magic": end - TRAILER_SIZE + 72, "last byte": end - 1,
    }
    return at


# Where ls does not read (it checks the header and the trailer only): a flip there is for verify
# and restore to find.
LS_BLIND = ("first record", "middle record", "last record", "index", "first index", "last index", "stream digest")

def part_names() -> list[str]:
    # The parts are named by layout(); a tiny stream with one record per part kind gives the list.
    from backup_samples import backup_bytes
    return sorted(layout(backup_bytes()))


PARTS = part_names()
CUTS = ["empty", "inside the preamble", "after the preamble", "inside the header", "after the header check",
        "inside the first record", "before the index", "inside the index", "inside the trailer",
        "without its last byte"]
APPENDS = {"a zero byte": b"\0", "80 bytes of garbage": bytes(range(80)), "the whole backup again": None}


def check_refused(case, capsys, damaged: bytes, ls_may_pass: bool) -> None:
    path = case.dir / "damaged.tzb"
    path.write_bytes(damaged)
    for argv in (["verify", str(path)], ["restore", str(path), "--to", str(case.dir / "restored")]):
        code, out, err = tzero_main_in_process(argv, capsys)
        case.tally.commands += 1
        case.note(out, err)
        lines = err.strip().splitlines()
        assert code == 4 and len(lines) == 1 and lines[0].startswith("tzero: "), (argv[0], code, err)
    assert not os.path.exists(case.dir / "restored") or os.listdir(case.dir / "restored") == [], \
        "a refused restore leaves no file"
    code, out, err = tzero_main_in_process(["ls", str(path), "--json"], capsys)
    case.tally.commands += 1
    case.note(out, err)
    if code == 0:
        assert ls_may_pass, "ls passed a damage it reads"
        json.loads(out)
    else:
        assert code == 4 and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("part", PARTS)
@pytest.mark.parametrize("codec", ["none", "zstd"])
def test_a_bit_flipped(case, capsys, backups, codec, part):
    blob = bytearray(backups[codec])
    blob[layout(bytes(blob))[part]] ^= 0x10
    check_refused(case, capsys, bytes(blob), ls_may_pass=part.startswith(LS_BLIND))
    case.finish()


def cut_at(blob: bytes, where: str) -> bytes:
    at = layout(blob)
    ends = {"empty": 0, "inside the preamble": 9, "after the preamble": 16,
            "inside the header": at["header json middle"], "after the header check": at["header check end"] + 1,
            "inside the first record": at["first record payload start"] + 7, "before the index": at["index tag"],
            "inside the index": at["first index entry position"], "inside the trailer": at["trailer check"],
            "without its last byte": len(blob) - 1}
    return blob[:ends[where]]


@pytest.mark.parametrize("where", CUTS)
@pytest.mark.parametrize("codec", ["none", "zstd"])
def test_truncated(case, capsys, backups, codec, where):
    check_refused(case, capsys, cut_at(backups[codec], where), ls_may_pass=False)
    case.finish()


@pytest.mark.parametrize("what", list(APPENDS))
@pytest.mark.parametrize("codec", ["none", "zstd"])
def test_bytes_appended(case, capsys, backups, codec, what):
    blob = backups[codec]
    check_refused(case, capsys, blob + (APPENDS[what] if APPENDS[what] is not None else blob), ls_may_pass=False)
    case.finish()


@pytest.mark.parametrize("where", ["inside the first record", "inside the index", "without its last byte"])
def test_truncated_through_a_pipe(case, backups, where):
    """The same refusal when the backup comes down a pipe (no trailer to read first): verify and
    restore from standard input, exit 4, one line, no file left."""
    damaged = cut_at(backups["zstd"], where)
    for args in (["verify", "-"], ["restore", "-", "--to", case.dir / "restored"]):
        proc = case.tzero(*args, input=damaged.decode("latin-1"), encoding="latin-1")
        assert proc.returncode == 4 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not os.path.exists(case.dir / "restored") or os.listdir(case.dir / "restored") == []
    case.finish()
