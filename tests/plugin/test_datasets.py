"""Designated datasets on real subsystems: a striped volume under live writers, ranges,
partitions and concatenations, the order of the stream, refusals, and memory."""

import datetime
import json
import shutil
import subprocess
import sys
import threading

import pytest

from backupformat import StreamReader
from testkit.workload import DependentWriter, StripedVolume, time_zero_problems

from helpers import REPO, TZERO, last_json, make_image, paced_backup, tzero, wait_for

LEG = 16 << 20
WRITERS = 4


def striped_image(legs: list[bytes], chunk: int) -> bytes:
    """The logical volume the legs hold, computed apart from controller/backup/layout.py."""
    out = bytearray()
    for c in range(len(legs) * (len(legs[0]) // chunk)):
        leg, row = c % len(legs), c // len(legs)
        out += legs[leg][row * chunk:(row + 1) * chunk]
    return bytes(out)


@pytest.mark.parametrize("stripe, chunk", [("64K", "64K"), ("16K", "64K"), ("256K", "16K")])
def test_stripe_volume_on_two_subsystems_under_writers_restores_a_prefix_at_time_zero(tmp_path, serve, stripe,
                                                                                        chunk):
    stripe_bytes = int(stripe[:-1]) << 10
    legs = [make_image(tmp_path / f"{n}.img", LEG, seed=i) for i, n in enumerate("xy")]
    s1 = serve("s1", {"x": tmp_path / "x.img"}, "--chunk", chunk)
    s2 = serve("s2", {"y": tmp_path / "y.img"}, "--chunk", chunk)
    volume = StripedVolume(stripe_bytes, [(s1.socket, "x"), (s2.socket, "y")], LEG)
    writers = [DependentWriter(i, WRITERS, [volume], [volume.size], seed=50 + i) for i in range(WRITERS)]
    for w in writers:
        w.start()
    try:
        wait_for(lambda: all(len(w.log) >= 10 for w in writers), 30, "writers to get going")
        cmd = [*TZERO, "backup", "-s", s1.control, "-s", s2.control, "-o", "-", "--json", "--no-progress",
               "--host-memory", "8M", "--dataset", f"vol=stripe:{stripe}:x,y"]
        summary = paced_backup(cmd, tmp_path / "b.tzb", lambda: sum(len(w.log) for w in writers))
    finally:
        for w in writers:
            w.stop.set()
        for w in writers:
            w.join(30)
    assert all(w.error is None for w in writers), [w.error for w in writers]
    assert summary["datasets"] == ["vol"] and summary["chunks_cow"] > 0
    tzero("restore", tmp_path / "b.tzb", "--dataset", "vol", "--to", tmp_path / "vol.img")
    restored = (tmp_path / "vol.img").read_bytes()
    assert len(restored) == 2 * LEG
    tz = datetime.datetime.fromisoformat(summary["time_zero"]).timestamp()
    problems, cuts = time_zero_problems(writers, [striped_image(legs, stripe_bytes)], [restored], tz)
    assert not problems
    assert all(0 < k < len(w.log) for k, w in zip(cuts, writers, strict=True)), \
        "time zero fell mid-run for every writer"


def gpt_disk(path, size=8 << 20) -> bytes:
    make_image(path, size, seed=9, zero_every=3)
    script = "label: gpt\n\np1 : start=2048, size=4096\np2 : start=8192, size=6144\n"
    subprocess.run(["sfdisk", "-q", str(path)], input=script, text=True, check=True, capture_output=True)
    return path.read_bytes()


def test_range_partition_and_concat_hold_their_exact_bytes_in_the_order_given(tmp_path, serve):
    disk = gpt_disk(tmp_path / "p.img")
    q = make_image(tmp_path / "q.img", 4 << 20, seed=2)
    r = make_image(tmp_path / "r.img", 1 << 20, seed=3)
    t = make_image(tmp_path / "t.img", (2 << 20) + 512, seed=4)  # not chunk-aligned
    s1 = serve("s1", {"p": tmp_path / "p.img", "q": tmp_path / "q.img"})
    s2 = serve("s2", {"r": tmp_path / "r.img", "t": tmp_path / "t.img"})
    out = tmp_path / "b.tzb"
    summary = last_json(tzero("backup", "-s", s1.control, "-s", s2.control, "-o", out, "--json", "--no-progress",
                              "--dataset", "cat=concat:t,r", "--dataset", "part=p:p2",
                              "--dataset", "rng=q:1M+1536K", "--dataset", "tail=q:3M-4M").stdout)
    assert summary["datasets"] == ["cat", "part", "rng", "tail"]
    tzero("restore", out, "--to", tmp_path / "restored")
    expected = {"cat": t + r, "part": disk[8192 * 512:14336 * 512], "rng": q[1 << 20:(5 << 19)], "tail": q[3 << 20:]}
    for name, data in expected.items():
        assert (tmp_path / "restored" / f"{name}.img").read_bytes() == data, name
    listing = json.loads(tzero("ls", out, "--json").stdout)
    assert [(d["name"], d["size"]) for d in listing["datasets"]] == [(n, len(d)) for n, d in expected.items()]
    assert [d["spec"] for d in listing["extra"]["datasets"]] == ["concat:t,r", "p:p2", "q:1M+1536K", "q:3M-4M"]
    with open(out, "rb") as f:
        order = [(rec.dataset_index, rec.offset) for rec in StreamReader(f).records()]
    assert order == sorted(order) and [i for i, _ in order][0] == 0 and order[-1][0] == 3, \
        "records lie in the stream dataset by dataset, each in ascending offset"


def test_writes_outside_the_designated_range_cost_no_copy_before_write(tmp_path, serve):
    make_image(tmp_path / "q.img", 16 << 20, seed=2)
    s = serve("s", {"q": tmp_path / "q.img"})
    stop, count = threading.Event(), [0]

    def outside_writer():
        h = s.connect("q")
        while not stop.is_set():
            h.pwrite(b"\xee" * 4096, (8 << 20) + (count[0] % 1024) * 4096)
            count[0] += 1
        h.shutdown()

    w = threading.Thread(target=outside_writer)
    w.start()
    try:
        cmd = [*TZERO, "backup", "-s", s.control, "-o", "-", "--json", "--no-progress", "--host-memory", "4M",
               "--dataset", "low=q:0-4M"]
        summary = paced_backup(cmd, tmp_path / "b.tzb", lambda: count[0])
    finally:
        stop.set()
        w.join()
    assert count[0] > 100 and summary["chunks_cow"] == 0
    assert s.status()["last_session"]["exports"]["q"]["untracked"] == 192  # 12 MiB of 64 KiB chunks


@pytest.mark.parametrize("spec, fragment", [
    ("a=nope", "no export named 'nope'"),
    ("a=q:100+4K", "not a multiple of 512"),
    ("a=q:3M+2M", "beyond export 'q'"),
    ("a=q:p1", "no partition table"),
    ("a=stripe:64K:q,q", "names an export twice"),
])
def test_bad_dataset_is_refused_before_anything_is_frozen(tmp_path, serve, spec, fragment):
    make_image(tmp_path / "q.img", 4 << 20, seed=2)
    s = serve("s", {"q": tmp_path / "q.img"})
    proc = tzero("backup", "-s", s.control, "-o", tmp_path / "b.tzb", "--dataset", spec, check=False)
    assert proc.returncode == 2 and fragment in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
    assert s.status()["last_session"] is None, "no session was opened"
    assert not (tmp_path / "b.tzb").exists() and not (tmp_path / "b.tzb.partial").exists()


def test_overlapping_datasets_are_refused_naming_both(tmp_path, serve):
    make_image(tmp_path / "q.img", 4 << 20, seed=2)
    s = serve("s", {"q": tmp_path / "q.img"})
    proc = tzero("backup", "-s", s.control, "-o", tmp_path / "b.tzb", "--dataset", "a=q:0-2M",
                 "--dataset", "b=q:1M-3M", check=False)
    assert proc.returncode == 2 and "datasets 'a' and 'b' overlap on export 'q' at byte 1048576" in proc.stderr


MEASURE = "import resource, subprocess, sys; subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL); " \
          "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
OVERHEAD_MIB = 32  # the interpreter, libnbd, xxhash and tzero's modules: 24-25 MiB measured; the rest is slack


def peak_rss_mib(cmd: list) -> float:
    """Peak RSS of CMD, a child of a fresh parent that has no other children."""
    out = subprocess.run([sys.executable, "-c", MEASURE, *cmd], capture_output=True, text=True, cwd=REPO)
    return int(out.stdout.strip().splitlines()[-1]) / 1024


def test_memory_with_16M_host_memory_and_two_subsystems_stays_within_the_bound(tmp_path, serve):
    size = 64 << 20
    for n in "xy":
        make_image(tmp_path / f"{n}.img", size, seed=ord(n), zero_every=1000)
    s1 = serve("s1", {"x": tmp_path / "x.img"})
    s2 = serve("s2", {"y": tmp_path / "y.img"})
    cmd = [*TZERO, "backup", "-s", s1.control, "-s", s2.control, "-o", str(tmp_path / "b.tzb"), "--force",
           "--no-progress", "--host-memory", "16M"]
    peak = peak_rss_mib(cmd + ["--dataset", "v=stripe:64K:x,y"])
    assert peak <= 16 + OVERHEAD_MIB, f"controller peak RSS {peak:.1f} MiB"
    assert peak_rss_mib(cmd) <= 16 + OVERHEAD_MIB, "two whole exports, one read ahead of the other"


@pytest.mark.skipif(not all(shutil.which(t) for t in ("mkfs.ext4", "e2fsck", "debugfs")),
                    reason="e2fsprogs is not installed")
def test_restored_stripe_volume_is_a_file_system_that_checks_clean(tmp_path, serve):
    content = tmp_path / "content"
    content.mkdir()
    (content / "hello.txt").write_text("striped over two subsystems\n" * 1000)
    volume = tmp_path / "volume.img"
    with open(volume, "wb") as f:
        f.truncate(16 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(content), str(volume)], check=True, capture_output=True)
    data, stripe = volume.read_bytes(), 64 << 10
    for leg, name in enumerate("xy"):  # split the volume the way dm-striped lays it on its legs
        (tmp_path / f"{name}.img").write_bytes(b"".join(
            data[c * stripe:(c + 1) * stripe] for c in range(leg, len(data) // stripe, 2)))
    s1 = serve("s1", {"x": tmp_path / "x.img"})
    s2 = serve("s2", {"y": tmp_path / "y.img"})
    tzero("backup", "-s", s1.control, "-s", s2.control, "-o", tmp_path / "b.tzb", "--dataset", "fs=stripe:64K:x,y")
    tzero("restore", tmp_path / "b.tzb", "--dataset", "fs", "--to", tmp_path / "fs.img")
    fsck = subprocess.run(["e2fsck", "-fn", str(tmp_path / "fs.img")], capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    cat = subprocess.run(["debugfs", "-R", "cat /hello.txt", str(tmp_path / "fs.img")], capture_output=True, text=True)
    assert cat.stdout == "striped over two subsystems\n" * 1000
