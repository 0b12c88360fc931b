"""vm/dbload.py without booting: the workload, the database check and the analysis the
crash-consistency tests rely on. These run in `make check` (no vm marker)."""

import json
import sqlite3
import subprocess
import sys
import time

import pytest

from vm import dbload
from vm.dbload import Commit


def commits(*spans):
    """Commits 1, 2, ... with the given (begin, end) times."""
    return [Commit(n, b, e) for n, (b, e) in enumerate(spans, start=1)]


LOG = commits((0.0, 1.0), (1.0, 2.0), (2.0, 3.0), (3.0, 4.0))


@pytest.mark.parametrize("t0, bounds", [(0.5, (0, 1)), (2.5, (2, 3)), (3.99, (3, 4)), (4.5, (4, None))])
def test_counter_bounds_are_the_commits_acknowledged_either_side(t0, bounds):
    assert dbload.counter_bounds(LOG, t0) == bounds


def test_counter_bounds_slack_leaves_out_commits_too_close_to_call():
    assert dbload.counter_bounds(LOG, 2.05, slack=0.1) == (1, 3)


def test_read_commits_drops_a_torn_last_line(tmp_path):
    log = tmp_path / "commits.log"
    log.write_text("1 10.0 10.5\n2 10.5 11.0\n3 11.0 1")
    assert dbload.read_commits(log) == commits((10.0, 10.5), (10.5, 11.0))


def test_read_commits_refuses_a_gap(tmp_path):
    log = tmp_path / "commits.log"
    log.write_text("1 10.0 10.5\n3 10.5 11.0\n")
    with pytest.raises(AssertionError, match="out of order"):
        dbload.read_commits(log)


def test_host_minus_guest_trusts_the_shorter_round_trip_widened_by_the_drift():
    clock = {"start": {"offset": 0.30, "rtt": 0.040, "guest": 0}, "end": {"offset": 0.301, "rtt": 0.002, "guest": 9}}
    offset, slack = dbload.host_minus_guest(clock)
    assert offset == pytest.approx(0.301) and slack == pytest.approx(0.001 + 0.001)


def test_stall_figures_compare_the_window_with_the_baseline():
    log = commits(*[(t, t + 0.01) for t in range(100)], (100.0, 100.5), (100.5, 100.51))
    figures = dbload.stall_figures(log, t0=100.2, baseline_before=50)
    assert figures["around_max_ms"] == pytest.approx(500) and figures["around_commits"] == 2
    assert figures["at_t0_ms"] == pytest.approx(500)
    assert figures["baseline_p99_ms"] == pytest.approx(10) and figures["baseline_commits"] == 50


def test_clock_offset_on_the_same_clock_is_zero_within_its_round_trip(tmp_path):
    """The premise of the guest's clock measurement: this host's filesystem stamps the probe
    with its fine-grained clock (a coarse stamp would be a tick, 4 ms, early)."""
    probe = dbload.clock_offset(str(tmp_path / "probe"))
    assert abs(probe["offset"]) <= probe["rtt"] / 2 + 0.0005
    assert not (tmp_path / "probe").exists()


def test_run_until_stopped_then_check_finds_the_database_whole(tmp_path):
    """The workload as a guest runs it: it commits until its stop file appears, logs every
    commit and measures the clock; the check finds one row per logged commit."""
    ready, stop = tmp_path / "ready", tmp_path / "stop"
    argv = [sys.executable, dbload.__file__, "run", "--db", str(tmp_path / "db.sqlite"),
            "--log", str(tmp_path / "log"), "--stop", str(stop), "--clock", str(tmp_path / "clock.json"),
            "--ready-file", str(ready), "--ready-after", "5"]
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        deadline = time.monotonic() + 30
        while not ready.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        stop.touch()
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    logged = dbload.read_commits(tmp_path / "log")
    assert len(logged) >= 5 and out == f"dbload: {len(logged)} commits\n"
    assert set(json.loads((tmp_path / "clock.json").read_text())) == {"start", "end"}
    assert dbload.check(str(tmp_path / "db.sqlite")) == {
        "integrity": "ok", "counter": len(logged), "rows": len(logged), "bad_rows": 0, "journal_mode": "wal"}


def test_check_finds_a_row_that_does_not_match_its_counter(tmp_path):
    db = str(tmp_path / "db.sqlite")
    con = dbload.open_db(db)
    for _ in range(3):
        dbload.bump(con)
    con.execute("UPDATE rows SET payload = x'00' WHERE n = 2")
    con.close()
    result = dbload.check(db)
    assert result["counter"] == 3 and result["bad_rows"] == 1


def test_open_db_refuses_a_database_that_cannot_use_wal(tmp_path):
    with pytest.raises((AssertionError, sqlite3.Error)):
        dbload.open_db(":memory:")
