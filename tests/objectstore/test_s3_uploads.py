"""Sweeping a bucket of tzero's stale uploads, against a real store: only marked ones, only
stale ones, and markers whose upload is already gone."""

import subprocess

from common.objectstore import ObjectURI
from controller.backup import s3uploads
from controller.backup.s3uploads import MARKER_PREFIX, put_marker, sweep, this_process


def dead_owner():
    p = subprocess.Popen(["true"])
    p.wait()
    return this_process()._replace(pid=p.pid)


def marked_upload(client, bucket, key, owner):
    upload_id = client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    put_marker(client, ObjectURI(bucket, key), upload_id, owner)
    return upload_id


def test_s3_uploads_sweep_aborts_the_marked_upload_of_a_dead_process_and_removes_its_marker(store, bucket):
    client = store.client()
    marked_upload(client, bucket, "dead/one.tzb", dead_owner())
    assert sweep(client, bucket) == ["dead/one.tzb"]
    assert store.uploads(bucket) == [] and store.keys(bucket) == []


def test_s3_uploads_sweep_keeps_the_upload_of_a_live_process(store, bucket):
    client = store.client()
    upload_id = marked_upload(client, bucket, "live.tzb", this_process())
    assert sweep(client, bucket) == []
    assert [u["UploadId"] for u in store.uploads(bucket)] == [upload_id]
    assert len(store.keys(bucket, MARKER_PREFIX)) == 1
    client.abort_multipart_upload(Bucket=bucket, Key="live.tzb", UploadId=upload_id)


def test_s3_uploads_sweep_removes_a_marker_whose_upload_is_gone(store, bucket):
    client = store.client()
    upload_id = marked_upload(client, bucket, "gone.tzb", dead_owner())
    client.abort_multipart_upload(Bucket=bucket, Key="gone.tzb", UploadId=upload_id)
    assert sweep(client, bucket) == ["gone.tzb"]
    assert store.keys(bucket) == []


def test_s3_uploads_sweep_leaves_a_foreign_object_under_the_marker_prefix_alone(store, bucket):
    client = store.client()
    client.put_object(Bucket=bucket, Key=s3uploads.MARKER_PREFIX + "notes", Body=b"not json")
    assert sweep(client, bucket) == []
    assert store.keys(bucket) == [s3uploads.MARKER_PREFIX + "notes"]
