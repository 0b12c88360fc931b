"""tzero ls: datasets in stream order from the header, counts from the trailer."""

import io
import json
import sys
import time

import pytest

from backupformat import Dataset, Header, StreamWriter
from controller.cli.main import main

from backup_samples import TIME_ZERO, backup_bytes, flipped, record_position, write_backup


def ls(capsys, *args):
    code = main(["ls", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def test_cmd_ls_text_lists_datasets_in_stream_order(tmp_path, capsys):
    code, out, err = ls(capsys, write_backup(tmp_path / "b.tzb"))
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert lines[-4:] == ["dataset  size", "a        256 KiB", "b        97.7 KiB", "empty    0 B"]
    assert f"time zero   {TIME_ZERO}" in lines
    assert "format 2, written by tzero 0.1.0" in lines[0]
    assert any(line.startswith("records     4,") for line in lines)


def test_cmd_ls_json_prints_one_object(tmp_path, capsys):
    code, out, _ = ls(capsys, write_backup(tmp_path / "b.tzb"), "--json")
    info = json.loads(out)
    assert code == 0 and out.count("\n") == 1
    assert info["datasets"] == [{"name": "a", "size": 262144}, {"name": "b", "size": 100000},
                                {"name": "empty", "size": 0}]
    assert (info["time_zero"], info["chunk_size"], info["format_version"]) == (TIME_ZERO, 65536, 2)
    assert info["records"] == 4 and info["stream_bytes"] == (tmp_path / "b.tzb").stat().st_size


def test_cmd_ls_pipe_shows_header_without_counts(monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", _Pipe(backup_bytes()))
    code, out, _ = ls(capsys, "-", "--json")
    info = json.loads(out)
    assert code == 0 and info["records"] is None and len(info["datasets"]) == 3


def test_cmd_ls_damaged_record_not_read_so_exits_0(tmp_path, capsys):
    blob = backup_bytes()
    path = tmp_path / "b.tzb"
    path.write_bytes(flipped(blob, record_position(blob, 1) + 100))
    code, _, _ = ls(capsys, path)
    assert code == 0


def test_cmd_ls_incomplete_backup_shows_header_then_exits_4(tmp_path, capsys):
    path = tmp_path / "b.tzb"
    path.write_bytes(backup_bytes()[:-100])
    code, out, err = ls(capsys, path, "--json")
    assert code == 4 and json.loads(out)["records"] is None
    assert err == f"tzero: {path}: trailer: bad end magic (an incomplete backup?)\n"


def test_cmd_ls_not_a_backup_exits_4_with_one_line(tmp_path, capsys):
    path = tmp_path / "notes.txt"
    path.write_text("hello\n")
    code, out, err = ls(capsys, path)
    assert code == 4 and out == ""
    assert err == f"tzero: {path}: header: bad magic, not a tzero backup\n"


class _Pipe:
    """Stands in for sys.stdin with a non-seekable binary buffer."""

    def __init__(self, data):
        self.buffer = _Unseekable(data)


class _Unseekable(io.BytesIO):
    def seekable(self):
        return False


def test_cmd_ls_compressed_backup_shows_its_ratio(tmp_path, capsys):
    path = write_backup(tmp_path / "b.tzb", codec=1)
    code, out, _ = ls(capsys, path, "--json")
    info = json.loads(out)
    assert code == 0 and info["stored_bytes"] < info["data_bytes"]
    assert info["compression_ratio"] == round(info["data_bytes"] / info["stored_bytes"], 3) > 10
    code, out, _ = ls(capsys, path)
    assert any(line.startswith("compression ") and "ratio" in line for line in out.splitlines())


def test_cmd_ls_raw_backup_has_ratio_one(tmp_path, capsys):
    _, out, _ = ls(capsys, write_backup(tmp_path / "b.tzb"), "--json")
    assert json.loads(out)["compression_ratio"] == 1.0


def labelled(path, time_zero, label=None, note=None, datasets=(("a", 4096),), records=((0, 0, b"\x07" * 4096),)):
    """A backup at PATH of TIME_ZERO whose header's extra holds LABEL and NOTE."""
    out = io.BytesIO()
    extra = {k: v for k, v in (("label", label), ("note", note)) if v is not None}
    w = StreamWriter(out, Header(tool_version="0.1.0", time_zero=time_zero, chunk_size=65536,
                                 datasets=[Dataset(n, s) for n, s in datasets], extra=extra))
    for rec in records:
        w.write(*rec)
    w.finish()
    path.write_bytes(out.getvalue())
    return path


def test_cmd_ls_shows_the_label_and_note_of_a_backup(tmp_path, capsys):
    path = labelled(tmp_path / "b.tzb", TIME_ZERO, "nightly", "before the upgrade to 12.4")
    code, out, _ = ls(capsys, path)
    assert code == 0 and "label       nightly" in out and "note        before the upgrade to 12.4" in out
    info = json.loads(ls(capsys, path, "--json")[1])
    assert (info["label"], info["note"], info["kind"], info["size"], info["complete"]) == \
        ("nightly", "before the upgrade to 12.4", "full", 4096, True)


@pytest.fixture
def utc(monkeypatch):
    """This host's time zone is UTC for the test (ls shows time zero in it)."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_cmd_ls_folder_lists_backups_oldest_first_leaving_other_files_out(tmp_path, capsys, utc):
    labelled(tmp_path / "z-first.tzb", "2026-11-24T22:00:03+00:00", "nightly")
    labelled(tmp_path / "a-second.tzb", "2026-11-25T22:00:01+00:00", "nightly",
             datasets=(("vm1", 1 << 30), ("db", 1 << 20)), records=())
    labelled(tmp_path / "m-third.tzb", "2026-11-26T09:30:00+00:00")
    (tmp_path / "notes.txt").write_text("not a backup\n")
    (tmp_path / "sub").mkdir()
    code, out, err = ls(capsys, tmp_path)
    assert code == 0 and err == ""
    assert out.splitlines() == [
        "TIME ZERO                    LABEL    KIND  SIZE   STORED    DATASETS  FILE",
        "Tue 2026-11-24 22:00:03 UTC  nightly  full  4 KiB  4.4 KiB   a         z-first.tzb",
        "Wed 2026-11-25 22:00:01 UTC  nightly  full  1 GiB  371 B     vm1,db    a-second.tzb",
        "Thu 2026-11-26 09:30:00 UTC  -        full  4 KiB  4.39 KiB  a         m-third.tzb",
    ]


def test_cmd_ls_folder_json_lists_each_backup_as_ls_would(tmp_path, capsys):
    labelled(tmp_path / "b.tzb", TIME_ZERO, "weekly")
    (tmp_path / "c.tzb.partial").write_bytes(backup_bytes()[:-100])
    code, out, _ = ls(capsys, tmp_path, "--json")
    found = json.loads(out)
    assert code == 0 and found["directory"] == str(tmp_path) and found["damaged"] == []
    assert [(b["backup"], b["label"], b["complete"]) for b in found["backups"]] == \
        [(str(tmp_path / "b.tzb"), "weekly", True), (str(tmp_path / "c.tzb.partial"), None, False)]


def test_cmd_ls_folder_with_a_damaged_backup_lists_the_rest_and_exits_4(tmp_path, capsys):
    labelled(tmp_path / "good.tzb", TIME_ZERO)
    (tmp_path / "cut.tzb").write_bytes(backup_bytes()[:-100])
    code, out, err = ls(capsys, tmp_path)
    assert code == 4 and "good.tzb" in out and "cut.tzb" in out and "incomplete" in out
    assert err.count("\n") == 1 and "1 of the backups" in err and "cut.tzb" in err
