"""tzero ls: datasets in stream order from the header, counts from the trailer."""

import io
import json
import sys

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
