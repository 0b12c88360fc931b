"""A striped volume of two host subsystems under a live database in a guest: a backup
taken by the host, and a backup whose controller is killed.

The host serves two images full of random bytes as two subsystems (`tzero serve`, exports
a and b: no holes, so the copy reads every chunk while the guest writes). The first
guest gets both exports as virtio disks through QEMU's own NBD client, builds a dm-striped
volume over them (64 KiB chunks, leg a first, disks picked by serial), makes ext4 on it
(nodiscard: mkfs would otherwise punch the random bytes out) and
runs the SQLite workload of vm/dbload.py. While it writes, the host:

1. backs up the stripe dataset `vol=stripe:64K:a,b` across both subsystems;
2. starts a second backup into a pipe nobody reads, with the least host memory (4 MiB), so
   that it stalls mid-copy with both sessions open, checks it is copying, and SIGKILLs it;
3. waits for the guest's commit log to grow past the kill, then tells the guest to stop.

The guest then saves its kernel log. The host restores the first backup, replays its
journal on a copy and runs `e2fsck -fn`; a second guest gets the restored volume as a raw
virtio disk, mounts it and checks the database.

Clocks: time zero is the host's; the workload measures host-minus-guest at its start and
stop through the job share (vm/dbload.py), and the comparisons are made in the guest's clock.
"""

import json
import random
import shutil
import subprocess
import time
from types import SimpleNamespace

import pytest

from vm import dbload
from vm.guest import Disk

from helpers import TZERO, Subsystem, tzero, wait_for
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

LEG_BYTES = 64 << 20
STRIPE = "vol=stripe:64K:a,b"
READY_AFTER = 300         # commits before the first backup: the workload's normal latency
COMMITS_AFTER = 50        # commits the host waits for after each event
DBLOAD = f"/usr/bin/python3 {REPO}/vm/dbload.py"

WRITER = SHELL_PRELUDE + f"""
A=/dev/disk/by-id/virtio-lega B=/dev/disk/by-id/virtio-legb
[ -b $A ] && [ -b $B ] || {{ echo "legs missing: $(ls /dev/disk/by-id)"; exit 10; }}
a=$(readlink -f $A) b=$(readlink -f $B)
sa=$(blockdev --getsz $a) sb=$(blockdev --getsz $b)
leg=$(( (sa < sb ? sa : sb) / 128 * 128 ))          # whole 64 KiB chunks of the smaller leg
DM_DISABLE_UDEV=1 dmsetup create vol --table "0 $((2 * leg)) striped 2 128 $a 0 $b 0" || exit 11
echo "@@tzero VOLUME $(blockdev --getsize64 /dev/mapper/vol) $a $b"
mkfs.ext4 -q -E nodiscard /dev/mapper/vol || exit 12
mkdir -p /tmp/fs && mount /dev/mapper/vol /tmp/fs || exit 13
{DBLOAD} run --db /tmp/fs/db.sqlite --log /run/job/commits.log --stop /tmp/stop \\
    --clock /run/job/clock.json --ready-file /tmp/ready --ready-after {READY_AFTER} \\
    > /run/job/workload.out 2>&1 &
load=$!
{wait_for_file_sh("/tmp/ready", 150)}
echo "@@tzero READY"
{wait_for_file_sh("/run/job/stop", 600)}
touch /tmp/stop && wait $load
echo "@@tzero WORKLOAD_EXIT $?"
dmesg > /run/job/dmesg.txt
umount /tmp/fs && DM_DISABLE_UDEV=1 dmsetup remove vol || exit 14
"""

CHECKER = f"""
mkdir -p /tmp/r && mount /dev/disk/by-id/virtio-restored /tmp/r || exit 10
echo "@@tzero DBCHECK $({DBLOAD} check --db /tmp/r/db.sqlite)"
umount /tmp/r || exit 11
dmesg > /run/job/dmesg.txt
"""


def commit_count(log) -> int:
    try:
        return len(dbload.read_commits(log))
    except FileNotFoundError:
        return 0


def wait_commits(log, count: int, what: str) -> None:
    wait_for(lambda: commit_count(log) >= count, 120, f"{count} commits {what}")


def session_of(sub) -> dict:
    return sub.status()["session"] or {}


def backup_killed_mid_copy(subs, log) -> SimpleNamespace:
    """Start a backup of the stripe into a pipe nobody reads, wait until every subsystem's
    session is active with chunks still pending, SIGKILL the controller."""
    args = [*TZERO, "backup", *[a for s in subs for a in ("-s", s.control)], "--dataset", STRIPE,
            "-o", "-", "--no-progress", "--host-memory", "4M"]
    with subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=REPO) as proc:
        wait_for(lambda: all(session_of(s).get("phase") == "active" for s in subs), 60, "active sessions")
        sessions = [session_of(s) for s in subs]
        running = proc.poll() is None
        killed_at, commits = time.time(), commit_count(log)
        proc.kill()
        proc.wait()
    return SimpleNamespace(sessions=sessions, running=running, at=killed_at, commits=commits)


def ended_sessions(subs, sessions) -> list[dict]:
    """The last_session of each subsystem once it is the one of SESSIONS, ended."""
    def ended():
        last = [s.status()["last_session"] or {} for s in subs]
        if [x.get("session") for x in last] == [x["session"] for x in sessions]:
            return last
    return wait_for(ended, 30, "the killed backup's sessions to end")


def host_run(*argv) -> tuple[int, str]:
    proc = subprocess.run(list(map(str, argv)), capture_output=True, text=True)
    return proc.returncode, proc.stdout + proc.stderr


def needs_recovery(image) -> bool:
    status, output = host_run("dumpe2fs", "-h", image)
    assert status == 0, output
    return "needs_recovery" in output


@pytest.fixture(scope="module")
def story(module_job, tmp_path_factory):
    work = tmp_path_factory.mktemp("stripe")
    legs = {name: work / f"{name}.img" for name in ("a", "b")}
    rnd = random.Random(4)
    for path in legs.values():
        path.write_bytes(rnd.randbytes(LEG_BYTES))
    subs = [Subsystem(work, f"s{i}", {name: path}, "--side-dir", work)
            for i, (name, path) in enumerate(legs.items(), start=1)]
    log = module_job / "commits.log"
    try:
        disks = [Disk(f"leg{name}", nbd_socket=s.socket, nbd_export=name) for name, s in zip(legs, subs, strict=False)]
        with guest(WRITER, module_job, disks=disks, timeout=2 * GUEST_TIMEOUT) as g:
            g.wait_for("READY")
            backup_started = time.time()
            out = tzero("backup", *[a for s in subs for a in ("-s", s.control)], "--dataset", STRIPE,
                        "-o", work / "vol.tz", "--json", "--no-progress")
            backup = last_json(out.stdout)
            (module_job / "backup.json").write_text(out.stdout)   # kept for a post-mortem
            wait_commits(log, commit_count(log) + COMMITS_AFTER, "after the backup")
            kill = backup_killed_mid_copy(subs, log)
            ended = ended_sessions(subs, kill.sessions)
            wait_commits(log, kill.commits + COMMITS_AFTER, "after the kill")
            (module_job / "stop").touch()
            verdict = g.wait()
        for s in subs:
            assert s.proc.poll() is None, f"subsystem {s.control} died:\n{s.output()}"
        check(verdict)
    finally:
        for s in subs:
            s.stop()
    restored = work / "restored"
    tzero("restore", "--to", restored, work / "vol.tz")
    # The restored image stays as it came; the journal is replayed on one copy, and the
    # second guest mounts (and so writes) another.
    replayed, mounted = work / "replayed.img", work / "mounted.img"
    shutil.copyfile(restored / "vol.img", replayed)
    shutil.copyfile(restored / "vol.img", mounted)
    fs = SimpleNamespace(needs_recovery=needs_recovery(replayed))
    fs.replay = host_run("e2fsck", "-y", "-E", "journal_only", replayed)
    fs.replayed = needs_recovery(replayed)
    fs.fsck = host_run("e2fsck", "-fn", replayed)
    second = check(guest(CHECKER, tmp_path_factory.mktemp("job"),
                         disks=[Disk("restored", path=mounted)]).wait())
    offset, slack = dbload.host_minus_guest(json.loads((module_job / "clock.json").read_text()))
    return SimpleNamespace(
        verdict=verdict, backup=backup, kill=kill, ended=ended, fs=fs, second=second,
        offset=offset, slack=slack, t0=iso_epoch(backup["time_zero"]) - offset,
        backup_started=backup_started - offset, commits=dbload.read_commits(log))


def test_guest_stripes_the_two_host_exports(story):
    """The guest's dm-striped volume spans both legs whole: the size the dataset has too."""
    size, _, _ = story.verdict.value("VOLUME").split()
    assert int(size) == 2 * LEG_BYTES
    assert story.backup["datasets"] == ["vol"] and story.backup["bytes"] > 0


def test_restored_volume_passes_fsck_on_the_host_after_journal_replay(story):
    """The host: the restored volume was taken mounted (journal to recover); e2fsck replays
    it on a copy (without -f, so nothing else is repaired), then -fn finds no error."""
    assert story.fs.needs_recovery
    status, output = story.fs.replay
    assert status in (0, 1), output
    assert not story.fs.replayed
    status, output = story.fs.fsck
    assert status == 0, output


def test_second_guest_mounts_the_restored_volume_and_the_database_is_whole(story):
    """A second guest mounts the restored volume as a raw virtio disk (its kernel replays the
    journal) and the database passes integrity_check, row by row."""
    db = json.loads(story.second.value("DBCHECK"))
    assert db["integrity"] == "ok"
    assert db["rows"] == db["counter"] and db["bad_rows"] == 0
    assert io_errors(story.second.job_dir / "dmesg.txt") == []


def test_restored_counter_lies_at_time_zero(story):
    """In the guest's clock: the counter is at least the last commit acknowledged before the
    host's time zero and at most the first acknowledged after (widened by the clock's slack)."""
    counter = json.loads(story.second.value("DBCHECK"))["counter"]
    lo, hi = dbload.counter_bounds(story.commits, story.t0, story.slack)
    assert hi is not None, "no commit was acknowledged after time zero"
    assert lo <= counter <= hi, f"counter {counter} outside [{lo}, {hi}] (slack {story.slack * 1e3:.1f} ms)"
    # The slack only widens the bounds; past half a second the clock measurement is broken.
    assert story.slack < 0.5, f"the clock offset is uncertain by {story.slack:.3f} s"


def test_killed_controller_was_mid_copy(story):
    """The killed backup was still running, both sessions active with chunks pending."""
    assert story.kill.running
    for session in story.kill.sessions:
        assert session["phase"] == "active"
        assert sum(c["pending"] for c in session["exports"].values() if c) > 0


def test_killed_controller_sessions_end_aborted_on_both_subsystems(story):
    """`tzero status` on each subsystem: no session, the last one aborted, its side store freed."""
    for last in story.ended:
        assert last["phase"] == "aborted", last
        assert "control connection closed" in last["abort_reason"]
        assert last["side_memory_bytes"] == 0 and last["side_spill_bytes"] == 0


def test_guest_keeps_committing_after_the_controller_is_killed(story):
    """The guest's counter goes on rising after the kill, and the workload ends cleanly."""
    killed = story.kill.at - story.offset
    after = [c for c in story.commits if c.begin > killed + story.slack]
    assert len(after) >= COMMITS_AFTER - 1 and after[-1].n > story.kill.commits
    assert story.verdict.value("WORKLOAD_EXIT") == "0"


def test_guest_kernel_log_has_no_io_errors(story):
    """The guest's kernel logged no I/O error, no blk_update_request, no ext4 error through
    both backups and the kill."""
    assert io_errors(story.verdict.job_dir / "dmesg.txt") == []


def test_write_stall_around_time_zero_is_reported(story):
    """Figures only (no timed assertion): the longest commit within 1 s of the host's time
    zero against the workload's normal p99 before the backup started."""
    figures = dbload.stall_figures(story.commits, story.t0, story.backup_started)
    figures["pause_ms"] = story.backup["pause_ms"]
    figures["chunks_cow"] = story.backup["chunks_cow"]
    figures["clock_slack_ms"] = round(story.slack * 1e3, 2)
    print(f"dm-striped volume over two host subsystems: {json.dumps(figures)}")
    print("guest timeline (s from QEMU start):", " ".join(f"{m.name}@{m.at:.1f}" for m in story.verdict.markers))
    assert figures["around_commits"] >= 1
