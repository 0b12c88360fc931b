"""tzero verify: the whole backup is read; one line says intact, or where it is not."""

import io
import subprocess
import sys
from pathlib import Path

import pytest

from backupformat import StreamReader
from controller.cli.main import main
from controller.restore.verify import verify

from backup_samples import backup_bytes, flipped, record_position, write_backup

TZERO = Path(sys.executable).parent / "tzero"


def run_verify(capsys, path):
    code = main(["verify", str(path)])
    out, err = capsys.readouterr()
    return code, out, err


def test_verify_intact_backup_returns_counts():
    s = verify(StreamReader(io.BytesIO(backup_bytes())))
    assert (s.datasets, s.records) == (3, 4)
    assert s.data_bytes == 65536 + 131072 + 8192 + (100_000 - 65536)


def test_cmd_verify_intact_exits_0_with_one_summary_line(tmp_path, capsys):
    code, out, err = run_verify(capsys, write_backup(tmp_path / "b.tzb"))
    assert code == 0 and err == ""
    assert out.count("\n") == 1
    assert "intact: 3 datasets, 4 records" in out


@pytest.mark.parametrize("damage, line", [
    (lambda b: b[:record_position(b, 2) + 40],
     "dataset 'b' at offset 4096: truncated in the record payload: expected 8192 bytes, got 8"),
    (lambda b: flipped(b, record_position(b, 3) + 32 + 7),
     "dataset 'b' at offset 65536: record checksum mismatch"),
    (lambda b: b[:record_position(b, 1)] + b[record_position(b, 2):record_position(b, 3)]
     + b[record_position(b, 1):record_position(b, 2)] + b[record_position(b, 3):],
     "dataset 'a' at offset 131072: record of dataset 'a' after dataset 'b': out of order"),
    (lambda b: flipped(b, len(b) - 60), "trailer: trailer checksum mismatch"),
    (lambda b: flipped(b, len(b) - 12), "trailer: stream digest mismatch"),
    (lambda b: b[:-80], "trailer: truncated in the trailer: expected 40 bytes, got 0"),
    (lambda b: b"PK\x03\x04" + b[4:], "header: bad magic, not a tzero backup"),
])
def test_cmd_verify_damaged_exits_4_with_one_line_naming_the_place(tmp_path, capsys, damage, line):
    path = tmp_path / "b.tzb"
    path.write_bytes(damage(backup_bytes()))
    code, out, err = run_verify(capsys, path)
    assert code == 4 and out == ""
    assert err == f"tzero: {path}: {line}\n"


def test_cmd_verify_missing_file_exits_1(tmp_path, capsys):
    code, _, err = run_verify(capsys, tmp_path / "nope.tzb")
    assert code == 1 and "cannot open" in err and err.count("\n") == 1


def test_cmd_verify_stdin_reads_the_stream(monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(backup_bytes())))
    code, out, _ = run_verify(capsys, "-")
    assert code == 0 and out.startswith("stdin: intact:")


def test_cmd_verify_without_backup_argument_exits_2(capsys):
    with pytest.raises(SystemExit) as e:
        main(["verify"])
    assert e.value.code == 2


def test_console_script_verify_reports_damage_without_traceback(tmp_path):
    good = write_backup(tmp_path / "good.tzb")
    bad = tmp_path / "bad.tzb"
    bad.write_bytes(backup_bytes()[:-1])
    ok = subprocess.run([TZERO, "verify", good], capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and "intact" in ok.stdout
    ko = subprocess.run([TZERO, "verify", bad], capture_output=True, text=True, timeout=60)
    assert ko.returncode == 4
    assert ko.stderr.startswith("tzero: ") and ko.stderr.count("\n") == 1
    assert "Traceback" not in ko.stderr


def test_console_script_verify_reads_a_pipe(tmp_path):
    blob = backup_bytes()
    p = subprocess.run([TZERO, "verify", "-"], input=blob, capture_output=True, timeout=60)
    assert p.returncode == 0 and b"intact" in p.stdout


def test_verify_compressed_backup_checks_every_record(tmp_path, capsys):
    blob = backup_bytes(codec=1)
    good = tmp_path / "good.tzb"
    good.write_bytes(blob)
    assert main(["verify", str(good)]) == 0
    bad = tmp_path / "bad.tzb"
    pos = record_position(blob, 2)
    bad.write_bytes(blob[:pos + 40] + bytes([blob[pos + 40] ^ 0x40]) + blob[pos + 41:])
    assert main(["verify", str(bad)]) == 4
    err = capsys.readouterr().err
    assert "dataset 'b' at offset 4096" in err and err.count("\n") == 1
