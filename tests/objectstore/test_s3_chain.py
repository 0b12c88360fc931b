"""Incremental chains in a bucket: a full backup and incrementals straight to s3://, each
counting from the one before it by --since s3://..., restored, verified, listed and served
from the store, the bases found beside the incremental under the same key prefix."""

import json
import random
import subprocess

import pytest

from helpers import REPO, TZERO, last_json, make_image, wait_for
from s3load import one_line, s3

SIZE = 8 << 20


def write(sub, offset: int, data: bytes) -> None:
    h = sub.connect("a")
    h.pwrite(data, offset)
    h.shutdown()


@pytest.fixture
def chain(store, bucket, tmp_path, serve, s3env):
    """mon (full), tue and wed (incrementals) of export a, in s3://BUCKET/host1/; the image's
    bytes at each time zero."""
    make_image(tmp_path / "a.img", SIZE, seed=21)
    sub = serve("s", {"a": tmp_path / "a.img"}, "--chunk", "64K")
    rnd = random.Random(4)
    states, summaries = {}, {}
    since = None
    for day in ("mon", "tue", "wed"):
        if since:
            for _ in range(20):
                write(sub, rnd.randrange(SIZE // 4096) * 4096, rnd.randbytes(4096))
        uri = f"s3://{bucket}/host1/{day}.tzb"
        extra = ["--since", since] if since else []
        summaries[day] = last_json(s3(s3env, "backup", "-s", sub.control, "-o", uri, "--json", "--no-progress",
                                      *extra).stdout)
        states[day] = (tmp_path / "a.img").read_bytes()
        since = uri
    return {"sub": sub, "states": states, "summaries": summaries, "prefix": f"s3://{bucket}/host1"}


def test_s3_chain_incrementals_count_from_their_base_in_the_bucket(chain):
    tue, wed = chain["summaries"]["tue"], chain["summaries"]["wed"]
    assert tue["kind"] == "incremental" and tue["base"]["file"] == "mon.tzb"
    assert wed["kind"] == "incremental" and wed["base"]["file"] == "tue.tzb"
    assert wed["bytes"] < chain["summaries"]["mon"]["bytes"] // 4, "only what changed is in it"


@pytest.mark.parametrize("day", ["mon", "tue", "wed"])
def test_s3_chain_each_backup_restored_from_the_bucket_equals_its_time_zero(chain, s3env, tmp_path, day):
    s3(s3env, "restore", f"{chain['prefix']}/{day}.tzb", "--to", tmp_path / day)
    assert (tmp_path / day / "a.img").read_bytes() == chain["states"][day]


def test_s3_chain_verify_and_ls_of_an_incremental_in_the_bucket(chain, s3env):
    uri = f"{chain['prefix']}/wed.tzb"
    assert s3(s3env, "verify", uri).stdout.startswith(f"{uri}: intact")
    info = json.loads(s3(s3env, "ls", uri, "--json").stdout)
    assert info["kind"] == "incremental"


def test_s3_chain_served_from_the_bucket_reads_as_the_restore(chain, s3env, tmp_path):
    sock, pidfile = tmp_path / "b.sock", tmp_path / "b.pid"
    with open(tmp_path / "serve.log", "w") as log:
        proc = subprocess.Popen([*TZERO, "serve-backup", f"{chain['prefix']}/wed.tzb", "--socket", str(sock),
                                 "--pidfile", str(pidfile)], cwd=REPO, stderr=log, env=s3env)
    try:
        wait_for(lambda: pidfile.exists() or proc.poll() is not None, 60, "serve-backup to start")
        assert proc.poll() is None, (tmp_path / "serve.log").read_text()
        subprocess.run(["nbdcopy", f"nbd+unix:///a?socket={sock}", str(tmp_path / "copy.img")], check=True)
    finally:
        proc.terminate()
        proc.wait(30)
    assert (tmp_path / "copy.img").read_bytes() == chain["states"]["wed"]


def test_s3_chain_missing_base_in_the_bucket_is_one_line_naming_it(chain, store, s3env, tmp_path):
    bucket = chain["prefix"].split("/")[2]
    store.client().delete_object(Bucket=bucket, Key="host1/tue.tzb")
    proc = s3(s3env, "restore", f"{chain['prefix']}/wed.tzb", "--to", tmp_path / "r", check=False)
    assert proc.returncode == 4, proc.stderr
    assert "its base tue.tzb is missing" in one_line(proc.stderr)
    assert not (tmp_path / "r" / "a.img").exists()
