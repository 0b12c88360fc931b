"""Chains on disk: restore, verify, ls and consolidate find an incremental backup's bases beside
it (or by --base) and fail with one line naming a missing, replaced, swapped or altered base,
leaving nothing behind."""

import io
import json
import os
import shutil

import pytest
import xxhash

from backupformat import Dataset, StreamReader
from backupformat.chain import merged
from controller.cli.main import main
from controller.restore.chain import opened_chain
from controller.restore.restore import restore
from controller.restore.targets import DeviceTarget

from backup_samples import DATASETS, chain_bytes, chain_image, write_chain

LAYERS = [
    [(0, 0, b"\x01" * 65536), (0, 131072, b"\x05" * 4096), (1, 0, b"\x02" * 100_000)],
    [(0, 4096, 8192), (0, 131072 + 1024, b"\x06" * 1024), (1, 99_000, b"\x07" * 1000)],
    [(0, 0, b"\x08" * 512), (0, 6000, b"\x09" * 100), (1, 0, 4096)],
]


def run(capsys, *args):
    code = main([*map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tzero: "), err
    return lines[0]


@pytest.fixture
def chain(tmp_path):
    return write_chain(tmp_path, LAYERS)


def test_restore_of_an_incremental_writes_the_image_at_its_time_zero(tmp_path, chain, capsys):
    code, out, _ = run(capsys, "restore", chain[2], "--to", tmp_path / "out")
    assert code == 0
    for i, (name, _) in enumerate(DATASETS):
        assert (tmp_path / "out" / f"{name}.img").read_bytes() == chain_image(i, LAYERS)


def test_restore_of_a_middle_backup_ignores_the_newer_ones(tmp_path, chain, capsys):
    assert run(capsys, "restore", chain[1], "--to", tmp_path / "out")[0] == 0
    assert (tmp_path / "out" / "a.img").read_bytes() == chain_image(0, LAYERS[:2])


def test_restore_of_an_incremental_in_place_zeroes_what_the_chain_holds_as_zeros(tmp_path, chain):
    dev = tmp_path / "dev"
    dev.write_bytes(b"\xee" * 200_000)
    target = DeviceTarget(os.open(dev, os.O_WRONLY), str(dev), 200_000, Dataset("b", 100_000))
    with opened_chain(str(chain[2])) as opened:
        restore(opened.top, str(chain[2]), {1: target}, records=merged(opened.readers), describe=opened.error)
    data = dev.read_bytes()
    assert data[:100_000] == chain_image(1, LAYERS) and data[100_000:] == b"\xee" * 100_000


def test_verify_of_an_incremental_checks_every_backup_and_link(chain, capsys):
    code, out, _ = run(capsys, "verify", chain[2])
    assert code == 0 and "its chain of 3 intact and every link checked, oldest first: " in out
    assert out.strip().endswith(", ".join(str(p) for p in chain))


def test_missing_base_fails_verify_and_restore_with_one_line(tmp_path, chain, capsys):
    os.unlink(chain[0])
    for args in (["verify", chain[2]], ["restore", chain[2], "--to", tmp_path / "out"]):
        code, _, err = run(capsys, *args)
        assert code == 4
        assert one_line(err) == (f"tzero: {chain[1]}: its base c0.tzb is missing "
                                 "(not beside it; give it with --base FILE)")
    assert not (tmp_path / "out").exists()


def test_replaced_base_fails_with_one_line_before_anything_is_written(tmp_path, chain, capsys):
    other = chain_bytes([[(0, 0, b"\x0f" * 100)]])[0]  # a full backup of the same datasets and time zero
    chain[0].write_bytes(other)
    code, _, err = run(capsys, "restore", chain[2], "--to", tmp_path / "out")
    assert code == 4 and one_line(err).startswith(f"tzero: {chain[0]}: is not the base the next backup recorded")
    assert "(replaced or altered)" in err
    assert not (tmp_path / "out").exists()


def test_swapped_bases_fail_with_one_line(tmp_path, chain, capsys):
    os.rename(chain[0], tmp_path / "tmp")
    os.rename(chain[1], chain[0])
    os.rename(tmp_path / "tmp", chain[1])
    code, _, err = run(capsys, "verify", chain[2])
    assert code == 4 and one_line(err).startswith(f"tzero: {chain[1]}: is not the base the next backup recorded")


def test_altered_base_fails_verify_and_restore_naming_it_and_commits_nothing(tmp_path, chain, capsys):
    blob = bytearray(chain[0].read_bytes())
    entry = StreamReader(io.BytesIO(bytes(blob))).read_index()[0]
    at = entry.position + 32
    blob[at] ^= 0xFF  # a data byte, with its record check made to match: only the digest tells
    blob[at + entry.stored_length:at + entry.stored_length + 16] = \
        xxhash.xxh3_128(bytes(blob[entry.position:at + entry.stored_length])).digest()
    chain[0].write_bytes(bytes(blob))
    code, _, err = run(capsys, "verify", chain[2])
    assert code == 4 and one_line(err) == f"tzero: {chain[0]}: trailer: stream digest mismatch"
    code, _, err = run(capsys, "restore", chain[2], "--to", tmp_path / "out")
    assert code == 4 and one_line(err) == f"tzero: {chain[0]}: trailer: stream digest mismatch"
    assert os.listdir(tmp_path / "out") == []


def test_damaged_record_of_a_base_is_named_by_dataset_and_offset(tmp_path, chain, capsys):
    blob = bytearray(chain[1].read_bytes())
    entry = StreamReader(io.BytesIO(bytes(blob))).read_index()[1]
    blob[entry.position + 40] ^= 1
    chain[1].write_bytes(bytes(blob))
    code, _, err = run(capsys, "verify", chain[2])
    assert code == 4 and one_line(err) == f"tzero: {chain[1]}: dataset 'a' at offset 132096: record checksum mismatch"


def test_bases_given_with_base_are_matched_by_digest(tmp_path, chain, capsys):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for p in chain[:2]:
        shutil.move(p, elsewhere / f"renamed-{p.name}")
    code, out, _ = run(capsys, "verify", chain[2], "--base", elsewhere / "renamed-c1.tzb",
                       "--base", elsewhere / "renamed-c0.tzb")
    assert code == 0 and "its chain of 3 intact" in out
    code, _, err = run(capsys, "verify", chain[2], "--base", elsewhere / "renamed-c1.tzb",
                       "--base", elsewhere / "renamed-c0.tzb", "--base", chain[2])
    assert code == 2 and "is not a base of" in one_line(err)


def test_ls_of_an_incremental_lists_its_chain(chain, capsys):
    code, out, _ = run(capsys, "ls", chain[2], "--json")
    info = json.loads(out)
    assert code == 0 and info["kind"] == "incremental" and info["base"]["file"] == "c1.tzb"
    assert [m["backup"] for m in info["chain"]] == [str(p) for p in reversed(chain)]
    assert [m["kind"] for m in info["chain"]] == ["incremental", "incremental", "full"]
    assert info["format_version"] == 3 and info["compression_ratio"] is None


def test_ls_of_an_incremental_with_a_missing_base_lists_it_then_fails(chain, capsys):
    os.unlink(chain[1])
    code, out, err = run(capsys, "ls", chain[2])
    assert code == 4 and "kind        incremental, since c1.tzb" in out
    assert one_line(err) == f"tzero: {chain[2]}: its base c1.tzb is missing (not beside it; give it with --base FILE)"


def test_consolidate_writes_one_full_backup_of_the_chain(tmp_path, chain, capsys):
    code, out, _ = run(capsys, "consolidate", chain[2], "-o", tmp_path / "full.tzb", "--json")
    assert code == 0 and json.loads(out.splitlines()[-1])["chain"] == [str(p) for p in chain]
    header = StreamReader(io.BytesIO((tmp_path / "full.tzb").read_bytes())).header
    newest = StreamReader(io.BytesIO(chain[2].read_bytes())).header
    assert header.format_version == 2 and header.base is None
    assert (header.time_zero, header.datasets) == (newest.time_zero, newest.datasets)
    assert header.extra["tracking"] == newest.extra["tracking"]
    assert run(capsys, "restore", tmp_path / "full.tzb", "--to", tmp_path / "out")[0] == 0
    for i, (name, _) in enumerate(DATASETS):
        assert (tmp_path / "out" / f"{name}.img").read_bytes() == chain_image(i, LAYERS)


def test_consolidate_of_a_broken_chain_leaves_no_file(tmp_path, chain, capsys):
    blob = bytearray(chain[0].read_bytes())
    blob[-20] ^= 1  # the full backup's digest: found only once it is read whole
    chain[0].write_bytes(bytes(blob))
    code, _, err = run(capsys, "consolidate", chain[2], "-o", tmp_path / "full.tzb")
    assert code == 4 and str(chain[0]) in one_line(err)
    assert not (tmp_path / "full.tzb").exists() and not (tmp_path / "full.tzb.partial").exists()
