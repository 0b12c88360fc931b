"""A crash-consistent backup of a live database, all inside one guest, over kernel NBD.

The guest serves an image on its tmpfs with `tzero serve`, attaches it as /dev/nbd0 with
`tzero attach`, makes ext4 on it, and runs the SQLite workload of vm/dbload.py (WAL,
synchronous=FULL, one transaction at a time bumping a counter and inserting a row; each
acknowledged commit goes to /run/job/commits.log with the guest's clock). Mid-run it takes
`tzero backup` of its own subsystem, lets the workload run on, stops it, restores the
backup to a new image, replays the journal on a copy (`e2fsck -y -E journal_only`, without
-f: with -f it goes on to repair everything, and the `e2fsck -fn` after it proves nothing),
runs `e2fsck -fn`, mounts the copy and checks the database. The subsystem, the workload
and the backup all use the guest's clock, so time zero compares with the commit log as is.
"""

import json
from types import SimpleNamespace

import pytest

from vm import dbload

from vmhelpers import (
    GUEST_TIMEOUT,
    REPO,
    SHELL_PRELUDE,
    check,
    guest,
    io_errors,
    iso_epoch,
    last_json,
    wait_for_file_sh,
)

pytestmark = pytest.mark.vm

DISK = "64M"
READY_AFTER = 300  # commits before the backup: the workload's normal latency
DBLOAD = f"/usr/bin/python3 {REPO}/vm/dbload.py"

SCRIPT = SHELL_PRELUDE + f"""
truncate -s {DISK} /tmp/disk.img
tz serve --control /tmp/s.ctl --socket /tmp/s.sock --pidfile /tmp/s.pid --side-dir /tmp \\
    disk=/tmp/disk.img > /run/job/serve.log 2>&1 &
{wait_for_file_sh("/tmp/s.pid", 60)}
echo "@@tzero SERVING"
tz attach --device /dev/nbd0 "nbd+unix:///disk?socket=/tmp/s.sock" > /run/job/attach.out 2>&1 || exit 10
mkfs.ext4 -q /dev/nbd0 || exit 11
mkdir -p /tmp/fs && mount /dev/nbd0 /tmp/fs || exit 12
echo "@@tzero MOUNTED"
{DBLOAD} run --db /tmp/fs/db.sqlite --log /run/job/commits.log --stop /tmp/stop \\
    --ready-file /tmp/ready --ready-after {READY_AFTER} > /run/job/workload.out 2>&1 &
load=$!
{wait_for_file_sh("/tmp/ready", 150)}
echo "@@tzero BACKUP_START $(date +%s.%N)"
tz backup -s /tmp/s.ctl -o /tmp/backup.tz --json --no-progress \\
    > /run/job/backup.json 2> /run/job/backup.err || exit 13
echo "@@tzero BACKUP_DONE $(date +%s.%N)"
sleep 2                                   # commits after time zero, kept out of the backup
touch /tmp/stop && wait $load
echo "@@tzero WORKLOAD_EXIT $?"
dmesg > /run/job/dmesg.txt
umount /tmp/fs && tz detach /dev/nbd0 || exit 14

tz restore --to /tmp/restored /tmp/backup.tz > /run/job/restore.out 2>&1 || exit 15
echo "@@tzero NEEDS_RECOVERY $(dumpe2fs -h /tmp/restored/disk.img 2>/dev/null | grep -c needs_recovery)"
cp --sparse=always /tmp/restored/disk.img /tmp/replayed.img
try REPLAY e2fsck -y -E journal_only /tmp/replayed.img
echo "@@tzero REPLAYED $(dumpe2fs -h /tmp/replayed.img 2>/dev/null | grep -c needs_recovery)"
try FSCK e2fsck -fn /tmp/replayed.img
mkdir -p /tmp/r && mount -o loop /tmp/replayed.img /tmp/r || exit 16
echo "@@tzero DBCHECK $({DBLOAD} check --db /tmp/r/db.sqlite)"
umount /tmp/r
"""


@pytest.fixture(scope="module")
def run(module_job):
    # The longest story of the suite: two budgets.
    verdict = check(guest(SCRIPT, module_job, timeout=2 * GUEST_TIMEOUT).wait())
    backup = last_json((module_job / "backup.json").read_text())
    return SimpleNamespace(verdict=verdict, backup=backup, t0=iso_epoch(backup["time_zero"]),
                           commits=dbload.read_commits(module_job / "commits.log"),
                           db=json.loads(verdict.value("DBCHECK")))


def test_workload_commits_on_both_sides_of_time_zero(run):
    """The guest's workload was acknowledged before and after time zero: the backup was mid-run."""
    assert run.verdict.value("WORKLOAD_EXIT") == "0"
    before = [c for c in run.commits if c.end < run.t0]
    after = [c for c in run.commits if c.begin > run.t0]
    assert len(before) >= READY_AFTER and len(after) >= 5, (len(before), len(after))


def test_restored_filesystem_passes_fsck_after_journal_replay(run):
    """The guest: the restored image was taken mounted (its journal needs recovery); e2fsck
    replays the journal on a copy, then finds no error in it (exit 0 of -fn; the free-count
    summaries it may mention are not errors, ext4 keeps them in memory)."""
    assert run.verdict.value("NEEDS_RECOVERY") == "1"
    replay_status, replay_out = run.verdict.value("REPLAY").split(" ", 1)
    assert int(replay_status) in (0, 1), replay_out   # 1: the journal was replayed
    assert run.verdict.value("REPLAYED") == "0"
    status, output = run.verdict.value("FSCK").split(" ", 1)
    assert status == "0", output.replace("|", "\n")


def test_restored_database_passes_integrity_check(run):
    """The guest: the restored database opens, replays its WAL, and is whole, row by row."""
    assert run.db["integrity"] == "ok"
    assert run.db["rows"] == run.db["counter"] and run.db["bad_rows"] == 0


def test_restored_counter_lies_at_time_zero(run):
    """The backup's counter is at least the last commit acknowledged before time zero (WAL
    with synchronous=FULL makes it durable) and at most the first one acknowledged after."""
    lo, hi = dbload.counter_bounds(run.commits, run.t0)
    assert hi is not None, "no commit was acknowledged after time zero"
    assert lo <= run.db["counter"] <= hi, f"counter {run.db['counter']} outside [{lo}, {hi}]"


def test_guest_kernel_log_has_no_io_errors(run):
    """The guest's kernel saw no failed I/O on /dev/nbd0 while the backup ran."""
    assert io_errors(run.verdict.job_dir / "dmesg.txt") == []


def test_write_stall_around_time_zero_is_reported(run):
    """Figures only (no timed assertion): the longest commit within 1 s of time zero
    against the workload's normal p99 before the backup started."""
    figures = dbload.stall_figures(run.commits, run.t0, float(run.verdict.value("BACKUP_START")))
    figures["pause_ms"] = run.backup["pause_ms"]
    figures["chunks_cow"] = run.backup["chunks_cow"]
    print(f"kernel NBD in the guest: {json.dumps(figures)}")
    print("guest timeline (s from QEMU start):", " ".join(f"{m.name}@{m.at:.1f}" for m in run.verdict.markers))
    assert figures["around_commits"] >= 1
