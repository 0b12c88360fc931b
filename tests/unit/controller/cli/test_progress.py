"""Progress people and scripts can read: the same figures as a bar, plain lines or JSON lines,
monotonic and ending at 100 %; quiet for short runs off a terminal; driven by a fake clock."""

import argparse
import json
import os

import pytest

from controller.cli import progress as progress_module
from controller.cli.progress import Meter, Progress
from controller.errors import UsageError

MiB = 1 << 20


class Clock:
    def __init__(self):
        self.now = 1000.0

    def monotonic(self):
        return self.now


@pytest.fixture
def clock(monkeypatch):
    c = Clock()
    monkeypatch.setattr(progress_module, "time", c)
    return c


def options(mode="auto", fd=None, interval=None, quiet=False):
    return argparse.Namespace(progress=mode, progress_fd=fd, progress_interval=interval, quiet=quiet)


def run(clock, p, total, step, seconds_per_step, datasets=("a", "b")):
    """Feed P from 0 to TOTAL in STEPs, the clock moving SECONDS_PER_STEP each; then finish."""
    done = 0
    while done < total:
        clock.now += seconds_per_step
        done = min(done + step, total)
        p.update(done, datasets[0] if done <= total // 2 else datasets[1])
    p.finish()
    p.close()


def test_progress_json_lines_on_a_file_descriptor_parse_are_monotonic_and_end_at_100(clock):
    r, w = os.pipe()
    p = Progress(options("never", fd=w), "backup", 64 * MiB)
    run(clock, p, 64 * MiB, MiB, 0.25)
    os.close(w)
    with os.fdopen(r) as f:
        lines = [json.loads(line) for line in f]
    assert len(lines) >= 16, "one line a second over 16 s, and the last"
    assert [x["done_bytes"] for x in lines] == sorted(x["done_bytes"] for x in lines)
    assert [x["percent"] for x in lines] == sorted(x["percent"] for x in lines)
    assert lines[-1]["percent"] == 100.0 and lines[-1]["done_bytes"] == lines[-1]["total_bytes"] == 64 * MiB
    assert {x["command"] for x in lines} == {"backup"} and {x["dataset"] for x in lines} == {"a", "b"}
    assert lines[-2]["rate_bytes_per_s"] == pytest.approx(4 * MiB, rel=0.01), "1 MiB every 0.25 s"
    assert lines[5]["eta_s"] == pytest.approx((64 * MiB - lines[5]["done_bytes"]) / (4 * MiB), rel=0.05)


def test_progress_json_mode_writes_the_lines_on_standard_error(clock, capsys):
    run(clock, Progress(options("json"), "verify", 8 * MiB), 8 * MiB, MiB, 0.5)
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert lines[0]["done_bytes"] == MiB and lines[-1]["percent"] == 100.0


def test_progress_auto_off_a_terminal_says_nothing_for_a_short_run(clock, capsys):
    run(clock, Progress(options("auto"), "restore", 8 * MiB), 8 * MiB, MiB, 0.5)
    assert capsys.readouterr().err == ""


def test_progress_auto_off_a_terminal_prints_plain_lines_every_10_s_once_it_runs_long(clock, capsys):
    run(clock, Progress(options("auto"), "restore", 100 * MiB), 100 * MiB, MiB, 0.5)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 6, "at 10, 20, 30, 40 s, 50 s, then the last"
    assert lines[0].startswith("tzero restore: 20% 20 MiB of 100 MiB, 2 MiB/s, 40 s left, a")
    assert lines[-1] == "tzero restore: 100% 100 MiB of 100 MiB, 2 MiB/s, b"


def test_progress_says_why_it_is_slow_when_told(clock, capsys):
    p = Progress(options("plain"), "backup", 4 * MiB)
    p.why_slow = lambda: "waiting on the output writes (80% of the time)"
    clock.now += 1
    p.update(MiB, "vm1")
    assert capsys.readouterr().err.strip().endswith("vm1; waiting on the output writes (80% of the time)")


def test_progress_quiet_and_never_show_nothing_but_the_fd_still_gets_lines(clock, capsys):
    r, w = os.pipe()
    run(clock, Progress(options("plain", fd=w, quiet=True), "backup", 4 * MiB), 4 * MiB, MiB, 5)
    os.close(w)
    with os.fdopen(r) as f:
        assert json.loads(f.read().splitlines()[-1])["percent"] == 100.0
    assert capsys.readouterr().err == ""


def test_progress_always_draws_a_bar_with_human_sizes(clock, capsys):
    run(clock, Progress(options("always"), "backup", 8 * MiB), 8 * MiB, MiB, 0.5)
    err = capsys.readouterr().err
    assert "tzero backup 100% |" in err and "8 MiB of 8 MiB" in err and "2 MiB/s" in err


@pytest.mark.parametrize("fd, mode, said", [
    (987, "auto", "--progress-fd 987: not an open file descriptor"),
    (None, "loud", "--progress 'loud': choose one of"),
])
def test_progress_refuses_a_bad_option_as_a_usage_error(fd, mode, said):
    with pytest.raises(UsageError, match=said):
        Progress(options(mode, fd=fd), "backup", 1)


def test_progress_a_reader_that_goes_away_does_not_fail_the_command(clock, capsys):
    r, w = os.pipe()
    os.close(r)
    run(clock, Progress(options("never", fd=w), "backup", 4 * MiB), 4 * MiB, MiB, 1)
    os.close(w)
    assert "no more progress there" in capsys.readouterr().err


def test_meter_smooths_the_rate_towards_a_new_speed():
    m = Meter()
    start = m.started
    for i in range(1, 11):  # 10 MiB/s for 10 s
        m.sample(i * 10 * MiB, start + i)
    assert m.rate == pytest.approx(10 * MiB)
    m.sample(200 * MiB, start + 11)  # then 100 MiB/s for one second: the rate moves, not jumps
    assert 10 * MiB < m.rate < 40 * MiB
