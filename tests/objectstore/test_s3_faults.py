"""Faults of backups in an object store: each is one line and the right exit status, no
multipart upload outlives the next run, no object appears under KEY, and the applications
never notice."""

import contextlib
import os
import random
import signal
import subprocess
import time

import pytest

from controller.backup.s3uploads import MARKER_PREFIX

from helpers import REPO, TZERO, last_json, make_image
from s3load import Load, one_line, s3

KEY = "host1/nightly.tzb"


@pytest.fixture
def sub(tmp_path, serve):
    make_image(tmp_path / "a.img", 8 << 20, seed=5)
    return serve("s", {"a": tmp_path / "a.img"}, "--chunk", "64K")


@pytest.fixture
def big(tmp_path, serve):
    """A subsystem whose backup takes several parts more than the controller can buffer."""
    make_image(tmp_path / "big.img", 32 << 20, seed=9, zero_every=1000)
    return serve("big", {"big": tmp_path / "big.img"}, "--chunk", "64K")


def backup_args(sub, uri, *extra):
    return ["backup", "-s", sub.control, "-o", uri, "--no-progress", "--json", "--part-size", "5M", *extra]


@pytest.fixture
def good(store, bucket, sub, s3env):
    """A complete backup in BUCKET under KEY, and its bytes."""
    s3(s3env, *backup_args(sub, f"s3://{bucket}/{KEY}"))
    body = store.client().get_object(Bucket=bucket, Key=KEY)["Body"].read()
    return f"s3://{bucket}/{KEY}", body


@contextlib.contextmanager
def backup_process(args, env):
    """`tzero ARGS` running; if the block fails, the process is let go and killed, so that a
    controller held by SIGSTOP never leaves the test waiting for it."""
    proc = subprocess.Popen([*TZERO, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                            env=env)
    try:
        yield proc
    except BaseException:
        proc.kill()
        os.kill(proc.pid, signal.SIGCONT)
        raise
    finally:
        proc.wait(timeout=300)
        proc.stdout.close()
        proc.stderr.close()


def has_a_part(store, bucket) -> bool:
    """Whether an upload in BUCKET has a part in the store (an upload aborted meanwhile has none)."""
    uploads = store.uploads(bucket)
    if not uploads:
        return False
    try:
        return bool(store.client().list_parts(Bucket=bucket, Key=uploads[0]["Key"],
                                              UploadId=uploads[0]["UploadId"]).get("Parts"))
    except store.client().exceptions.NoSuchUpload:
        return False


def held_mid_upload(store, bucket, backup: subprocess.Popen) -> None:
    """Wait, holding the controller still at each look, until its upload has a part in the store
    and is not complete: then the upload is certainly mid-way. Returns with it held.
    Between looks it runs for a few milliseconds: continued and at once stopped again, it was
    seen to spend minutes still importing its modules."""
    deadline = time.monotonic() + 240
    while True:
        if backup.poll() is not None:
            raise AssertionError(f"the backup ended before it was caught mid-upload: {backup.stderr.read()}")
        os.kill(backup.pid, signal.SIGSTOP)
        if has_a_part(store, bucket):
            return
        os.kill(backup.pid, signal.SIGCONT)
        assert time.monotonic() < deadline, "the backup was never caught mid-upload"
        time.sleep(0.01)


def test_s3_faults_store_killed_mid_upload_fails_in_one_line_and_the_next_run_sweeps_the_upload(
        store, bucket, tmp_path, serve, s3env):
    load = Load(tmp_path, serve)
    uri = f"s3://{bucket}/{KEY}"
    try:
        with backup_process(load.backup_args(uri, "--upload-streams", "1"), s3env) as proc:
            held_mid_upload(store, bucket, proc)
            store.kill()
            os.kill(proc.pid, signal.SIGCONT)
            out, err = proc.communicate(timeout=300)
        load.let_writers_write(50)
    finally:
        load.stop()  # every writer's every write succeeded: the applications never noticed
    assert proc.returncode == 3, err
    line = one_line(err)
    assert "cannot reach the object store" in line
    assert "the unfinished upload could not be aborted" in line and f"next tzero backup to s3://{bucket}" in line
    assert store.secret_key not in err + out

    store.start()
    assert len(store.uploads(bucket)) == 1, "the dead store kept the upload"
    assert KEY not in store.keys(bucket), "no object under KEY"
    second = s3(store.env(), *load.backup_args(f"s3://{bucket}/other.tzb"))  # a store just back: full patience
    assert f"removed an unfinished upload of {uri} left by an earlier run" in second.stderr
    assert last_json(second.stdout)["object_store"]["swept_uploads"] == [KEY]
    assert store.uploads(bucket) == [], "no multipart upload outlives the next run"
    assert sorted(store.keys(bucket)) == ["other.tzb"], "no object under KEY, no marker left"


def test_s3_faults_store_restarted_mid_upload_is_retried_and_the_backup_completes(store, bucket, big):
    with backup_process(backup_args(big, f"s3://{bucket}/{KEY}", "--host-memory", "4M"), store.env()) as proc:
        held_mid_upload(store, bucket, proc)
        store.kill()
        os.kill(proc.pid, signal.SIGCONT)  # its next part finds no store, and backs off
        store.start()
        out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert last_json(out)["object_store"]["retried_parts"] > 0
    s3(store.env(), "verify", f"s3://{bucket}/{KEY}")
    assert store.uploads(bucket) == []


def test_s3_faults_interrupted_backup_aborts_its_upload_and_leaves_nothing(store, bucket, big, s3env):
    with backup_process(backup_args(big, f"s3://{bucket}/{KEY}", "--upload-streams", "1", "--host-memory", "4M"),
                        s3env) as proc:
        held_mid_upload(store, bucket, proc)
        os.kill(proc.pid, signal.SIGINT)
        os.kill(proc.pid, signal.SIGCONT)
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and one_line(err) == "tzero: interrupted by SIGINT", err
    assert store.uploads(bucket) == [] and store.keys(bucket) == []
    assert big.status()["last_session"]["phase"] == "aborted", "the session was released as with any failure"


def test_s3_faults_subsystem_gone_mid_upload_aborts_the_upload_and_leaves_nothing(store, bucket, big, s3env):
    """The subsystem stops while the controller is held mid-upload: the backup fails in one
    line (exit 3), and its upload is aborted."""
    with backup_process(backup_args(big, f"s3://{bucket}/{KEY}", "--host-memory", "4M", "--upload-streams", "1"),
                        s3env) as proc:
        held_mid_upload(store, bucket, proc)
        big.proc.kill()  # the subsystem vanishes, its session with it
        big.proc.wait()
        os.kill(proc.pid, signal.SIGCONT)
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 3, err
    one_line(err)
    assert store.uploads(bucket) == [] and store.keys(bucket) == []


def test_s3_faults_wrong_credentials_are_one_line_and_never_show_the_secret(store, bucket, sub, good):
    uri, _ = good
    env = store.env(AWS_SECRET_ACCESS_KEY="not-the-secret-at-all", AWS_MAX_ATTEMPTS="3")
    for args in (backup_args(sub, f"s3://{bucket}/new.tzb"), ["verify", uri], ["ls", uri],
                 ["restore", uri, "--to", sub.dir + "/r"]):
        proc = s3(env, *args, check=False)
        assert proc.returncode == 1, proc.stderr
        assert "the secret key does not match the access key" in one_line(proc.stderr)
        assert "not-the-secret-at-all" not in proc.stderr + proc.stdout
    env = store.env(AWS_ACCESS_KEY_ID="AKIAUNKNOWN", AWS_MAX_ATTEMPTS="3")
    assert "does not know this access key" in one_line(s3(env, "verify", uri, check=False).stderr)
    assert store.uploads(bucket) == [] and store.keys(bucket) == [KEY]


def test_s3_faults_missing_bucket_is_refused_before_anything_is_frozen(sub, s3env):
    proc = s3(s3env, *backup_args(sub, "s3://no-such-bucket-here/k.tzb"), check=False)
    assert proc.returncode == 2 and one_line(proc.stderr) == \
        "tzero: backing up to s3://no-such-bucket-here/k.tzb: no such bucket"
    assert sub.status()["last_session"] is None, "no session was opened"
    proc = s3(s3env, "restore", "s3://no-such-bucket-here/k.tzb", "--to", sub.dir + "/r", check=False)
    assert proc.returncode == 1 and one_line(proc.stderr).endswith("no such bucket")


def test_s3_faults_missing_object_is_one_line(bucket, s3env, tmp_path):
    for args in (["verify", f"s3://{bucket}/none"], ["ls", f"s3://{bucket}/none"],
                 ["serve-backup", f"s3://{bucket}/none", "--socket", str(tmp_path / "s.sock")]):
        proc = s3(s3env, *args, check=False)
        assert proc.returncode == 1 and one_line(proc.stderr) == f"tzero: opening s3://{bucket}/none: no such object"


def test_s3_faults_endpoint_unreachable_may_pass_on_retry(sub, bucket, store, tmp_path):
    env = store.env(AWS_ENDPOINT_URL="http://127.0.0.1:9", AWS_MAX_ATTEMPTS="2")
    for args in (backup_args(sub, f"s3://{bucket}/k.tzb"), ["verify", f"s3://{bucket}/k.tzb"]):
        proc = s3(env, *args, check=False)
        assert proc.returncode == 3
        assert one_line(proc.stderr).endswith("cannot reach the object store at http://127.0.0.1:9")


def test_s3_faults_existing_key_is_refused_without_force_and_replaced_with_it(store, bucket, sub, good, s3env):
    uri, before = good
    proc = s3(s3env, *backup_args(sub, uri), check=False)
    assert proc.returncode == 2 and one_line(proc.stderr) == f"tzero: {uri} exists; use --force to replace it"
    assert sub.status()["last_session"]["phase"] == "closed", "only the first backup's session ran"
    s3(s3env, *backup_args(sub, uri, "--force"))
    after = store.client().get_object(Bucket=bucket, Key=KEY)["Body"].read()
    assert after != before, "a new time zero, a new header"
    s3(s3env, "verify", uri)


def test_s3_faults_part_size_below_5_mib_is_refused_up_front(sub, bucket, s3env):
    proc = s3(s3env, "backup", "-s", sub.control, "-o", f"s3://{bucket}/k.tzb", "--part-size", "4M", check=False)
    assert proc.returncode == 2 and "S3 takes parts of at least 5 MiB" in one_line(proc.stderr)


def put(store, bucket, key, body):
    store.client().put_object(Bucket=bucket, Key=key, Body=body)
    return f"s3://{bucket}/{key}"


def test_s3_faults_truncated_object_fails_verify_naming_where(store, bucket, good, s3env):
    _, body = good
    uri = put(store, bucket, "truncated.tzb", body[:len(body) // 2])
    proc = s3(s3env, "verify", uri, check=False)
    assert proc.returncode == 4
    line = one_line(proc.stderr)
    assert line.startswith(f"tzero: {uri}: dataset 'a' at offset ") and "truncated" in line
    proc = s3(s3env, "ls", uri, check=False)
    assert proc.returncode == 4 and "end magic" in proc.stderr


def test_s3_faults_corrupted_object_fails_verify_naming_the_record(store, bucket, good, s3env):
    _, body = good
    damaged = bytearray(body)
    at = random.Random(2).randrange(len(body) // 4, len(body) // 2)
    damaged[at] ^= 0x40
    uri = put(store, bucket, "damaged.tzb", bytes(damaged))
    proc = s3(s3env, "verify", uri, check=False)
    assert proc.returncode == 4
    assert one_line(proc.stderr).startswith(f"tzero: {uri}: dataset 'a' at offset ")
    assert "checksum mismatch" in proc.stderr


def test_s3_faults_object_that_is_not_a_backup_is_exit_4(store, bucket, s3env):
    uri = put(store, bucket, "notes.txt", b"shopping list: milk, eggs\n" * 10)
    for command in ("verify", "ls"):
        proc = s3(s3env, command, uri, check=False)
        assert proc.returncode == 4 and one_line(proc.stderr) == f"tzero: {uri}: header: bad magic, not a tzero backup"


def test_s3_faults_unmarked_uploads_of_others_are_never_touched(store, bucket, sub, s3env):
    client = store.client()
    theirs = client.create_multipart_upload(Bucket=bucket, Key="someone/else.bin")["UploadId"]
    s3(s3env, *backup_args(sub, f"s3://{bucket}/{KEY}"))
    assert [u["UploadId"] for u in store.uploads(bucket)] == [theirs]
    assert store.keys(bucket, MARKER_PREFIX) == []
    client.abort_multipart_upload(Bucket=bucket, Key="someone/else.bin", UploadId=theirs)
