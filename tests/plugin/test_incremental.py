"""Incremental backups on real subsystems: chains under dependent writers restore exactly,
change maps survive a clean restart and are never trusted after an unclean one, and a
failed backup loses no change."""

import datetime
import json
import os
import signal
import subprocess

import pytest

from testkit.workload import DependentWriter, StripedVolume, time_zero_problems

from helpers import REPO, TZERO, last_json, make_image, paced_backup, tzero, wait_for
from raw_control import RawControl

SIZE = 16 << 20
CHUNK = 64 << 10
WRITERS = 4


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tzero: "), f"expected one tzero: line, got {stderr!r}"
    return lines[0]


def write(sub, export: str, offset: int, data: bytes) -> None:
    h = sub.connect(export)
    h.pwrite(data, offset)
    h.shutdown()


def backup(tmp_path, out: str, *subs, since: str | None = None, extra=()) -> dict:
    cmd = ["backup", *[a for s in subs for a in ("-s", s.control)], "-o", tmp_path / out, "--json", "--no-progress"]
    if since:
        cmd += ["--since", tmp_path / since]
    return last_json(tzero(*cmd, *extra).stdout)


def restored(tmp_path, backup_name: str, name: str) -> bytes:
    folder = tmp_path / f"restored-{backup_name}"
    tzero("restore", tmp_path / backup_name, "--to", folder, "--force")
    return (folder / f"{name}.img").read_bytes()


def stop_writers(writers) -> None:
    for w in writers:
        w.stop.set()
    for w in writers:
        w.join(30)
        assert w.error is None, f"{w.name} failed: {w.error!r}"


def test_chain_of_five_on_two_subsystems_under_writers_restores_each_time_zero(tmp_path, serve):
    names = ["a", "c", "b"]  # a and c on s1, b on s2
    paths = {n: tmp_path / f"{n}.img" for n in names}
    initial = [make_image(paths[n], SIZE, seed=i) for i, n in enumerate(names)]
    s1 = serve("s1", {"a": paths["a"], "c": paths["c"]})
    s2 = serve("s2", {"b": paths["b"]})
    targets = [(s1.socket, "a"), (s1.socket, "c"), (s2.socket, "b")]
    writers = [DependentWriter(i, WRITERS, targets, [SIZE] * 3, seed=300 + i) for i in range(WRITERS)]
    for w in writers:
        w.start()
    summaries = []
    try:
        wait_for(lambda: all(len(w.log) >= 10 for w in writers), 30, "writers to get going")
        for i in range(5):
            cmd = [*TZERO, "backup", "-s", s1.control, "-s", s2.control, "-o", "-", "--json", "--no-progress",
                   "--host-memory", "8M"]
            if i:
                cmd += ["--since", str(tmp_path / f"b{i - 1}.tzb")]
            summaries.append(paced_backup(cmd, tmp_path / f"b{i}.tzb", lambda: sum(len(w.log) for w in writers),
                                          piece=128 << 10))
            count = sum(len(w.log) for w in writers)
            wait_for(lambda c=count: sum(len(w.log) for w in writers) > c + 50, 30, "writes between backups")
    finally:
        stop_writers(writers)
    assert [s["kind"] for s in summaries] == ["full"] + ["incremental"] * 4
    assert [s["base"]["file"] for s in summaries[1:]] == [f"b{i}.tzb" for i in range(4)]
    assert sum(s["chunks_cow"] for s in summaries[1:]) > 0, "writers must have hit changed chunks mid-copy"
    cuts = []
    for i, s in enumerate(summaries):
        images = [restored(tmp_path, f"b{i}.tzb", n) for n in names]
        tz = datetime.datetime.fromisoformat(s["time_zero"]).timestamp()
        problems, found = time_zero_problems(writers, initial, images, tz)
        assert not problems, f"backup {i}: {problems}"
        cuts.append(found)
    for w in range(WRITERS):
        assert [c[w] for c in cuts] == sorted(c[w] for c in cuts), "a later backup holds a longer prefix"
        assert cuts[-1][w] > cuts[0][w]
    assert "chain of 5 intact" in tzero("verify", tmp_path / "b4.tzb").stdout


def test_chain_of_stripe_and_range_datasets_restores_each_time_zero(tmp_path, serve):
    legs = [make_image(tmp_path / f"{n}.img", SIZE, seed=i) for i, n in enumerate("xy")]
    r = bytearray(make_image(tmp_path / "r.img", SIZE, seed=7))
    s1 = serve("s1", {"x": tmp_path / "x.img", "r": tmp_path / "r.img"})
    s2 = serve("s2", {"y": tmp_path / "y.img"})
    volume = StripedVolume(16 << 10, [(s1.socket, "x"), (s2.socket, "y")], SIZE)
    writers = [DependentWriter(i, WRITERS, [volume], [volume.size], seed=80 + i) for i in range(WRITERS)]
    for w in writers:
        w.start()
    datasets = ["--dataset", "vol=stripe:16K:x,y", "--dataset", "part=r:1M+4M"]
    summaries, parts = [], []
    try:
        wait_for(lambda: all(len(w.log) >= 10 for w in writers), 30, "writers to get going")
        for i in range(3):
            cmd = [*TZERO, "backup", "-s", s1.control, "-s", s2.control, "-o", "-", "--json", "--no-progress",
                   "--host-memory", "8M", *datasets]
            if i:
                cmd += ["--since", str(tmp_path / f"v{i - 1}.tzb")]
            summaries.append(paced_backup(cmd, tmp_path / f"v{i}.tzb", lambda: sum(len(w.log) for w in writers),
                                          piece=128 << 10))
            parts.append(bytes(r[1 << 20:5 << 20]))
            for off, fill in ((0, b"o"), ((1 << 20) + i * CHUNK + 4096, b"i"), (3 << 20, bytes(1))):
                write(s1, "r", off, fill * 8192)  # outside the range, inside it, zeros inside it
                r[off:off + 8192] = fill * 8192
    finally:
        stop_writers(writers)
    assert [s["kind"] for s in summaries] == ["full", "incremental", "incremental"]
    assert summaries[2]["changed_bytes"] < summaries[0]["bytes"]
    striped = bytearray()
    for c in range(2 * SIZE // (16 << 10)):
        striped += legs[c % 2][(c // 2) * (16 << 10):(c // 2 + 1) * (16 << 10)]
    for i, s in enumerate(summaries):
        tz = datetime.datetime.fromisoformat(s["time_zero"]).timestamp()
        problems, _ = time_zero_problems(writers, [bytes(striped)], [restored(tmp_path, f"v{i}.tzb", "vol")], tz)
        assert not problems, f"backup {i}: {problems}"
        assert restored(tmp_path, f"v{i}.tzb", "part") == parts[i]


def test_incremental_without_changes_holds_no_record_and_restores_the_base(tmp_path, serve):
    content = make_image(tmp_path / "a.img", SIZE, seed=3)
    s = serve("s", {"a": tmp_path / "a.img"})
    backup(tmp_path, "full.tzb", s)
    summary = backup(tmp_path, "inc.tzb", s, since="full.tzb")
    assert (summary["kind"], summary["records"], summary["changed_bytes"]) == ("incremental", 0, 0)
    assert restored(tmp_path, "inc.tzb", "a") == content


def test_incremental_copy_before_write_costs_only_changed_chunks(tmp_path, serve):
    make_image(tmp_path / "a.img", SIZE, seed=3)
    s = serve("s", {"a": tmp_path / "a.img"})
    backup(tmp_path, "full.tzb", s)
    write(s, "a", 5 * CHUNK, b"c" * 100)
    with subprocess.Popen([*TZERO, "backup", "-s", s.control, "-o", "-", "--no-progress", "--since",
                           str(tmp_path / "full.tzb")], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          cwd=REPO) as proc:
        session = wait_for(lambda: (s.status()["session"] or {}).get("phase") == "active" and s.status()["session"],
                           30, "an active session")
        assert session["exports"]["a"]["pending"] + session["exports"]["a"]["done"] <= 1, \
            "only the changed chunk is tracked"
        for c in (0, 9, 100):
            write(s, "a", c * CHUNK, b"u" * 100)  # unchanged since the base: nothing to save
        assert s.status()["session"]["chunks_cow"] == 0
        proc.stdout.read()
        assert proc.wait(60) == 0
    assert s.status()["last_session"]["exports"]["a"]["untracked"] == SIZE // CHUNK - 1


def test_clean_restart_keeps_the_change_map_and_the_incremental_is_exact(tmp_path, serve):
    make_image(tmp_path / "a.img", SIZE, seed=4)
    s = serve("s", {"a": tmp_path / "a.img"})
    backup(tmp_path, "full.tzb", s)
    write(s, "a", 3 * CHUNK + 100, b"before stop" * 10)
    s.stop()
    s = serve("s", {"a": tmp_path / "a.img"})
    write(s, "a", 9 * CHUNK, b"after start" * 10)
    summary = backup(tmp_path, "inc.tzb", s, since="full.tzb")
    assert summary["kind"] == "incremental" and summary["changed_bytes"] == 2 * CHUNK
    assert restored(tmp_path, "inc.tzb", "a") == (tmp_path / "a.img").read_bytes()


def nbdkit_pid(sub) -> int:
    with open(f"/proc/{sub.proc.pid}/task/{sub.proc.pid}/children") as f:
        children = [int(p) for p in f.read().split()]
    assert len(children) == 1, children
    return children[0]


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split(") ")[1].startswith("Z")


def killed(sub, which: str) -> None:
    """SIGKILL nbdkit, `tzero serve`, or both (nbdkit first: as a crash or a power cut would)."""
    child = nbdkit_pid(sub)
    if which in ("nbdkit", "both"):
        os.kill(child, signal.SIGKILL)
    if which in ("serve", "both"):
        sub.proc.send_signal(signal.SIGKILL)
    if which == "nbdkit":
        sub.proc.wait(30)  # tzero serve goes when its nbdkit does
    wait_for(lambda: gone(child), 30, "nbdkit to end")
    sub.stop()
    for leftover in (sub.pidfile, sub.socket, sub.control):
        if os.path.exists(leftover):
            os.unlink(leftover)


@pytest.mark.parametrize("which", ["nbdkit", "both"])
def test_unclean_stop_refuses_the_next_incremental_and_full_instead_is_exact(tmp_path, serve, which):
    make_image(tmp_path / "a.img", SIZE, seed=5)
    s = serve("s", {"a": tmp_path / "a.img"})
    backup(tmp_path, "full.tzb", s)
    write(s, "a", 2 * CHUNK, b"lost?" * 100)
    killed(s, which)
    s = serve("s", {"a": tmp_path / "a.img"})
    refused = tzero("backup", "-s", s.control, "-o", tmp_path / "inc.tzb", "--since", tmp_path / "full.tzb",
                    "--no-progress", check=False)
    line = one_line(refused.stderr)
    assert refused.returncode == 1 and "did not stop cleanly" in line and "--full-if-needed" in line
    assert not (tmp_path / "inc.tzb").exists() and not (tmp_path / "inc.tzb.partial").exists()
    summary = backup(tmp_path, "inc.tzb", s, since="full.tzb", extra=["--full-if-needed"])
    assert summary["kind"] == "full" and summary["base"] is None and "did not stop cleanly" in summary["full_reason"]
    assert restored(tmp_path, "inc.tzb", "a") == (tmp_path / "a.img").read_bytes()
    write(s, "a", 7 * CHUNK, b"next" * 10)
    assert backup(tmp_path, "next.tzb", s, since="inc.tzb")["kind"] == "incremental", "the full starts a new chain"


def test_serve_killed_alone_stops_nbdkit_cleanly_and_keeps_the_map(tmp_path, serve):
    make_image(tmp_path / "a.img", SIZE, seed=6)
    s = serve("s", {"a": tmp_path / "a.img"})
    backup(tmp_path, "full.tzb", s)
    write(s, "a", 4 * CHUNK, b"kept" * 100)
    killed(s, "serve")  # nbdkit runs --exit-with-parent: it gets SIGTERM and stops cleanly
    s = serve("s", {"a": tmp_path / "a.img"})
    summary = backup(tmp_path, "inc.tzb", s, since="full.tzb")
    assert summary["kind"] == "incremental" and summary["changed_bytes"] == CHUNK
    assert restored(tmp_path, "inc.tzb", "a") == (tmp_path / "a.img").read_bytes()


def test_image_written_while_not_served_refuses_the_next_incremental(tmp_path, serve):
    make_image(tmp_path / "a.img", SIZE, seed=7)
    s = serve("s", {"a": tmp_path / "a.img"})
    backup(tmp_path, "full.tzb", s)
    s.stop()
    with open(tmp_path / "a.img", "r+b") as f:
        f.seek(11 * CHUNK)
        f.write(b"behind its back")
    s = serve("s", {"a": tmp_path / "a.img"})
    refused = tzero("backup", "-s", s.control, "-o", tmp_path / "inc.tzb", "--since", tmp_path / "full.tzb",
                    "--no-progress", check=False)
    assert refused.returncode == 1 and "was modified while it was not served" in one_line(refused.stderr)


def test_controller_killed_mid_copy_loses_no_change(tmp_path, serve):
    make_image(tmp_path / "a.img", SIZE, seed=8)
    s = serve("s", {"a": tmp_path / "a.img"})
    backup(tmp_path, "full.tzb", s)
    write(s, "a", 6 * CHUNK, b"frozen at the failed time zero" * 10)
    with subprocess.Popen([*TZERO, "backup", "-s", s.control, "-o", "-", "--no-progress", "--since",
                           str(tmp_path / "full.tzb")], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                          cwd=REPO) as proc:
        # Nobody reads the pipe, so the controller stalls mid-copy with its session open.
        wait_for(lambda: (s.status()["session"] or {}).get("phase") == "active", 30, "an active session")
        write(s, "a", 12 * CHUNK, b"during the failed backup" * 10)
        proc.send_signal(signal.SIGKILL)
    wait_for(lambda: (s.status()["last_session"] or {}).get("phase") == "aborted", 30, "the session to abort")
    summary = backup(tmp_path, "inc.tzb", s, since="full.tzb")
    assert summary["kind"] == "incremental" and summary["changed_bytes"] == 2 * CHUNK
    assert restored(tmp_path, "inc.tzb", "a") == (tmp_path / "a.img").read_bytes()


def test_backup_since_an_older_generation_still_counts_from_it(tmp_path, serve):
    make_image(tmp_path / "a.img", SIZE, seed=9)
    s = serve("s", {"a": tmp_path / "a.img"})
    backup(tmp_path, "full.tzb", s)
    write(s, "a", 1 * CHUNK, b"1" * 10)
    backup(tmp_path, "adhoc.tzb", s)  # a full backup in between: the nightly chain goes on
    write(s, "a", 2 * CHUNK, b"2" * 10)
    summary = backup(tmp_path, "inc.tzb", s, since="full.tzb")
    assert summary["kind"] == "incremental" and summary["changed_bytes"] == 2 * CHUNK
    assert restored(tmp_path, "inc.tzb", "a") == (tmp_path / "a.img").read_bytes()


def test_backup_since_refuses_other_datasets_and_a_subsystem_without_tracking(tmp_path, serve):
    make_image(tmp_path / "a.img", SIZE, seed=10)
    s = serve("s", {"a": tmp_path / "a.img"})
    backup(tmp_path, "part.tzb", s, extra=["--dataset", "p=a:0+1M"])
    other = tzero("backup", "-s", s.control, "-o", tmp_path / "x.tzb", "--since", tmp_path / "part.tzb",
                  "--dataset", "p=a:1M+1M", "--no-progress", check=False)
    assert other.returncode == 1 and "holds other datasets" in one_line(other.stderr)
    same = backup(tmp_path, "inc.tzb", s, since="part.tzb")  # BASE's datasets by default
    assert same["kind"] == "incremental" and same["datasets"] == ["p"]
    s.stop()
    s = serve("s", {"a": tmp_path / "a.img"}, "--no-tracking")
    off = tzero("backup", "-s", s.control, "-o", tmp_path / "y.tzb", "--since", tmp_path / "inc.tzb",
                "--no-progress", check=False)
    assert off.returncode == 1 and "--no-tracking" in one_line(off.stderr)


def test_serve_without_a_usable_default_state_dir_tracks_in_memory_and_says_so(tmp_path):
    (tmp_path / "not-a-dir").write_text("")
    make_image(tmp_path / "a.img", 1 << 20, seed=1)
    env = {**os.environ, "STATE_DIRECTORY": str(tmp_path / "not-a-dir" / "tzero")}
    pidfile, ctl = tmp_path / "s.pid", tmp_path / "s.ctl"
    with open(tmp_path / "serve.log", "w+") as log:
        proc = subprocess.Popen([*TZERO, "serve", "--control", ctl, "--socket", tmp_path / "s.sock", "--pidfile",
                                 pidfile, f"a={tmp_path / 'a.img'}"], cwd=REPO, env=env, stderr=log)
        try:
            wait_for(lambda: pidfile.exists() or proc.poll() is not None, 60, "tzero serve to start")
            status = last_json(tzero("status", ctl, "--json").stdout)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
        log.seek(0)
        said = log.read()
    assert status["tracking"]["a"]["known"]
    assert "change maps kept in memory only" in said and "not-a-dir" in said


def test_serve_with_an_unusable_state_dir_given_refuses_with_one_line(tmp_path):
    (tmp_path / "not-a-dir").write_text("")
    make_image(tmp_path / "a.img", 1 << 20, seed=1)
    proc = tzero("serve", "--control", tmp_path / "c.ctl", "--socket", tmp_path / "n.sock", "--state-dir",
                 tmp_path / "not-a-dir" / "x", f"a={tmp_path / 'a.img'}", check=False)
    assert proc.returncode == 2 and "state-dir" in one_line(proc.stderr)


def test_status_shows_each_exports_change_map(tmp_path, serve):
    make_image(tmp_path / "a.img", SIZE, seed=11)
    s = serve("s", {"a": tmp_path / "a.img"})
    backup(tmp_path, "full.tzb", s)
    write(s, "a", 0, b"x")
    tracking = s.status()["tracking"]["a"]
    assert tracking["known"] and tracking["changed_chunks"] == 1 and len(tracking["generations"]) == 1
    listed = json.loads(tzero("ls", tmp_path / "full.tzb", "--json").stdout)
    assert listed["extra"]["tracking"]["a"] == tracking["generation"]


def test_control_open_since_and_changes_paged_out(tmp_path, serve):
    make_image(tmp_path / "a.img", SIZE, seed=12)
    s = serve("s", {"a": tmp_path / "a.img"})
    ctl = RawControl(s.control)
    try:
        assert ctl.rq("hello", version=1)["tracking"]["enabled"]
        assert ctl.rq("open", since={"a": 7})["error"] == "bad-message"
        assert ctl.rq("open", since={"zz": "g"})["error"] == "unknown-export"
        opened = ctl.rq("open", since={"a": "nonesuch"})
        assert opened["changes"] == {"a": {"known": False, "reason": opened["changes"]["a"]["reason"],
                                           "time_zero": None}}
        assert "no completed backup" in opened["changes"]["a"]["reason"]
        for op in ("freeze", "thaw"):
            assert ctl.rq(op)["ok"]
        assert ctl.rq("changes", export="a")["error"] == "bad-message", "no known base, nothing to page out"
        generation = opened["generation"]
        assert ctl.rq("close")["ok"]
        for c in (1, 2, 5):
            write(s, "a", c * CHUNK, b"x")
        opened = ctl.rq("open", since={"a": generation}, keep={"a": [[0, 512]]})
        assert opened["changes"]["a"]["known"] and opened["changes"]["a"]["reason"] is None
        assert opened["changes"]["a"]["time_zero"] == s.status()["tracking"]["a"]["generations"][-1]["time_zero"]
        for op in ("freeze", "thaw"):
            assert ctl.rq(op)["ok"]
        assert ctl.rq("status")["session"]["exports"]["a"]["pending"] == 4, "changed chunks and the kept one"
        first = ctl.rq("changes", export="a", limit=1)
        rest = ctl.rq("changes", export="a", first=first["next"])
        assert (first["ranges"], rest["ranges"], rest["next"]) == ([[1, 2]], [[5, 1]], None)
        assert ctl.rq("changes", export="a", first=-1)["error"] == "bad-message"
        assert ctl.rq("abort")["ok"]
    finally:
        ctl.close()


def test_serve_refuses_a_device_whose_change_map_another_subsystem_holds(tmp_path, serve):
    """Refused in one line before nbdkit starts: by the device's lock (the first subsystem holds the
    image), or else by the change map's."""
    make_image(tmp_path / "a.img", 1 << 20, seed=1)
    s = serve("s", {"a": tmp_path / "a.img"})
    proc = tzero("serve", "--control", tmp_path / "c2.ctl", "--socket", tmp_path / "n2.sock", "--state-dir",
                 s.state_dir, f"b={tmp_path / 'a.img'}", check=False)
    line = one_line(proc.stderr)
    assert proc.returncode == 2 and ("another subsystem serves" in line or "is in use" in line)


def test_partition_dataset_in_a_chain_with_its_table_in_a_chunk_it_shares(tmp_path, serve):
    make_image(tmp_path / "d.img", 8 << 20, seed=13, zero_every=3)
    # p1 at 32 KiB: chunk 0 holds the table and p1's start
    script = "label: gpt\nfirst-lba: 34\n\np1 : start=64, size=4096\n"
    subprocess.run(["sfdisk", "-q", str(tmp_path / "d.img")], input=script, text=True, check=True,
                   capture_output=True)
    s = serve("s", {"d": tmp_path / "d.img"})
    backup(tmp_path, "full.tzb", s, extra=["--dataset", "boot=d:p1"])
    write(s, "d", 5 * CHUNK, b"inside" * 100)
    write(s, "d", 6 << 20, b"outside" * 100)
    first = backup(tmp_path, "inc1.tzb", s, since="full.tzb")
    assert first["kind"] == "incremental" and first["changed_bytes"] == CHUNK
    write(s, "d", 40000, b"beside the table" * 10)  # chunk 0, inside p1
    second = backup(tmp_path, "inc2.tzb", s, since="inc1.tzb")
    assert second["changed_bytes"] == CHUNK - (32 << 10), "chunk 0 holds only its part of p1"
    disk = (tmp_path / "d.img").read_bytes()
    assert restored(tmp_path, "inc2.tzb", "boot") == disk[32 << 10:(32 << 10) + (2 << 20)]
