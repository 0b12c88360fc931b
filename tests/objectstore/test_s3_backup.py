"""A backup straight to s3:// under dependent writers, and every way of reading it back from
the store: restore, verify, ls, and serve-backup read by nbdcopy and qemu-img."""

import json
import os
import signal
import subprocess

import pytest

from controller.backup.s3parts import MIN_PART

from helpers import REPO, TZERO, Subsystem, last_json, wait_for
from s3load import Load, hold_store_mid_copy, s3

needs_nbd_tools = pytest.mark.skipif(
    not all(os.path.exists(f"/usr/bin/{t}") for t in ("nbdcopy", "qemu-img")),
    reason="nbdcopy (libnbd-bin) and qemu-img (qemu-utils) are needed")


@pytest.fixture(scope="module")
def backup(store, tmp_path_factory):
    """Two subsystems under writers, backed up straight to s3://; the store is held mid-copy
    so that writers certainly write into chunks not yet copied. Restored from s3:// too."""
    workdir = tmp_path_factory.mktemp("s3backup")
    bucket = store.create_bucket("tz-consistency")
    env = store.env(AWS_MAX_ATTEMPTS="3")
    started = []

    def serve(name, exports, *options):
        started.append(Subsystem(workdir, name, exports, *options))
        return started[-1]

    load = Load(workdir, serve)
    uri = f"s3://{bucket}/nightly/2026-12-01.tzb"
    try:
        with subprocess.Popen([*TZERO, *load.backup_args(uri)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, cwd=REPO, env=env) as proc:
            hold_store_mid_copy(store, bucket, load, proc)
            out, err = proc.communicate(timeout=300)
        load.stop()
        assert proc.returncode == 0, err
        s3(env, "restore", uri, "--to", workdir / "restored")
        yield {"uri": uri, "bucket": bucket, "env": env, "summary": last_json(out), "stderr": err,
               "load": load, "dir": workdir, "restored": workdir / "restored"}
    finally:
        for w in load.writers:
            w.stop.set()
        for s in started:
            s.stop()


def test_s3_backup_under_dependent_writers_restored_from_s3_equals_time_zero(backup):
    summary = backup["summary"]
    assert summary["chunks_cow"] > 0, "writers wrote into uncopied chunks while the store was held"
    assert not backup["load"].problems(backup["restored"], summary)


def test_s3_backup_object_is_the_whole_stream_in_parts_of_the_asked_size(backup, store):
    summary = backup["summary"]
    head = store.client().head_object(Bucket=backup["bucket"], Key=backup["uri"].split("/", 3)[3])
    assert head["ContentLength"] == summary["bytes"]
    parts = summary["object_store"]
    assert parts["part_size"] == MIN_PART and parts["parts"] == -(-summary["bytes"] // MIN_PART) > 1
    assert store.uploads(backup["bucket"]) == [], "no multipart upload outlives a completed backup"
    assert store.keys(backup["bucket"]) == [backup["uri"].split("/", 3)[3]], "nothing but the backup is left"


def test_s3_backup_verifies_from_s3(backup):
    out = s3(backup["env"], "verify", backup["uri"]).stdout
    assert out.startswith(f"{backup['uri']}: intact: 3 datasets, {backup['summary']['records']} records")


def test_s3_backup_lists_from_s3_with_its_trailer(backup):
    info = json.loads(s3(backup["env"], "ls", backup["uri"], "--json").stdout)
    assert info["backup"] == backup["uri"] and [d["name"] for d in info["datasets"]] == ["a", "c", "b"]
    assert info["records"] == backup["summary"]["records"] and info["stream_bytes"] == backup["summary"]["bytes"]
    assert info["time_zero"] == backup["summary"]["time_zero"]


class ServedBackup:
    def __init__(self, workdir, uri, env):
        self.socket = str(workdir / "served.sock")
        pidfile = workdir / "served.pid"
        self.log = open(workdir / "served.log", "w")
        self.proc = subprocess.Popen([*TZERO, "serve-backup", uri, "--socket", self.socket, "--pidfile",
                                      str(pidfile)], cwd=REPO, stderr=self.log, env=env)
        wait_for(lambda: pidfile.exists() or self.proc.poll() is not None, 60, "serve-backup to start")
        assert self.proc.poll() is None, (workdir / "served.log").read_text()

    def uri(self, name):
        return f"nbd+unix:///{name}?socket={self.socket}"

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(30)
        self.log.close()
        return code


@pytest.fixture(scope="module")
def served(backup):
    server = ServedBackup(backup["dir"], backup["uri"], backup["env"])
    yield server
    assert server.stop() == 0


@needs_nbd_tools
@pytest.mark.parametrize("name", ["a", "b"])
def test_s3_backup_served_from_s3_read_by_nbdcopy_equals_the_restore(backup, served, tmp_path, name):
    subprocess.run(["nbdcopy", served.uri(name), str(tmp_path / "copy.img")], check=True)
    assert (tmp_path / "copy.img").read_bytes() == (backup["restored"] / f"{name}.img").read_bytes()


@needs_nbd_tools
def test_s3_backup_served_from_s3_converted_by_qemu_img_equals_the_restore(backup, served, tmp_path):
    out = tmp_path / "c.qcow2"
    subprocess.run(["qemu-img", "convert", "-O", "qcow2", served.uri("c"), str(out)], check=True)
    compare = subprocess.run(["qemu-img", "compare", "-f", "qcow2", "-F", "raw", str(out),
                              str(backup["restored"] / "c.img")], capture_output=True, text=True)
    assert compare.returncode == 0, compare.stdout + compare.stderr
