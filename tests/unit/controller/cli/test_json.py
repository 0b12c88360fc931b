"""--json prints exactly the fields docs/json.md documents, for every command that reads a backup,
and progress lines too."""

import argparse
import json
import os

from controller.cli.main import main
from controller.cli.progress import Progress

from backup_samples import backup_bytes, flipped, record_position, write_backup
from helpers import documented_fields


def run(capsys, *argv):
    code = main([*map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def only_json(out):
    lines = out.splitlines()
    assert len(lines) == 1, "one object on one line"
    return json.loads(lines[0])


def test_json_verify_fields_are_the_documented_ones(tmp_path, capsys):
    code, out, _ = run(capsys, "verify", write_backup(tmp_path / "b.tzb"), "--json")
    info = only_json(out)
    assert code == 0 and info["intact"] is True
    assert set(info) == documented_fields("tzero verify --json") - {"error"}


def test_json_verify_of_a_damaged_backup_says_so_on_standard_output_too(tmp_path, capsys):
    blob = backup_bytes()
    path = tmp_path / "bad.tzb"
    path.write_bytes(flipped(blob, record_position(blob, 1) + 100))
    code, out, err = run(capsys, "verify", path, "--json")
    info = only_json(out)
    assert code == 4 and info["intact"] is False and set(info) == {"backup", "intact", "error"}
    assert err == f"tzero: {info['error']}\n"


def test_json_restore_fields_are_the_documented_ones(tmp_path, capsys):
    code, out, _ = run(capsys, "restore", write_backup(tmp_path / "b.tzb"), "--to", tmp_path / "r", "--json")
    info = only_json(out)
    assert code == 0 and set(info) == documented_fields("tzero restore --json")
    assert [(d["name"], d["size"], d["target"]) for d in info["datasets"]] == [
        ("a", 262144, str(tmp_path / "r" / "a.img")), ("b", 100000, str(tmp_path / "r" / "b.img")),
        ("empty", 0, str(tmp_path / "r" / "empty.img"))]


def test_json_ls_fields_are_the_documented_ones(tmp_path, capsys):
    code, out, _ = run(capsys, "ls", write_backup(tmp_path / "b.tzb"), "--json")
    assert code == 0 and set(only_json(out)) == documented_fields("tzero ls BACKUP --json")


def test_json_ls_of_a_folder_fields_are_the_documented_ones(tmp_path, capsys):
    write_backup(tmp_path / "b.tzb")
    code, out, _ = run(capsys, "ls", tmp_path, "--json")
    found = only_json(out)
    assert code == 0 and set(found) == documented_fields("tzero ls DIR --json")
    assert set(found["backups"][0]) == documented_fields("tzero ls BACKUP --json")


def test_json_progress_line_fields_are_the_documented_ones():
    r, w = os.pipe()
    p = Progress(argparse.Namespace(progress="never", progress_fd=w, progress_interval=None, quiet=False),
                 "verify", 10)
    p.update(5, "a")
    p.finish()
    p.close()
    os.close(w)
    with os.fdopen(r) as f:
        lines = [json.loads(line) for line in f]
    assert lines and all(set(x) == documented_fields("Progress lines (--progress json, --progress-fd FD)")
                         for x in lines)
