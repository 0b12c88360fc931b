"""tzero's own unfinished multipart uploads in a bucket: marked when made, swept when stale.

An upload that is never completed nor aborted keeps its parts in the store, unseen and
paid for, forever. A failing backup aborts its upload; when the store cannot be reached to
do so, the upload stays behind. So every upload tzero makes is marked: an object
MARKER_PREFIX<hash> in the same bucket holds JSON naming the key, the upload, and who runs
it (host name, boot id, pid and the process's start time). The owner renews its marker
every RENEW_S while the upload lives and removes it when the upload ends.

Every `tzero backup -o s3://BUCKET/...` sweeps BUCKET before it starts: a marked upload is
stale when its process is gone (the marker names this host and boot, and no process with
that pid and start time runs), or when its marker was not renewed for STALE_AFTER_S by the
store's own clock (a controller on another host that died). A stale upload is aborted and
its marker removed. Uploads without a marker are never touched: they are not tzero's.
"""

import datetime
import email.utils
import hashlib
import json
import os
import socket
from typing import Any, NamedTuple

from common.objectstore import NO_OBJECT, ObjectURI, StoreError, retrying

MARKER_PREFIX = ".tzero/uploads/"
RENEW_S = 60.0
STALE_AFTER_S = 15 * 60.0


class Owner(NamedTuple):
    """Who runs an upload: enough to tell, on the same host, whether it still runs."""

    host: str
    boot_id: str
    pid: int
    started: int  # the process's start time in clock ticks after boot (/proc/PID/stat field 22)


def this_process() -> Owner:
    return Owner(socket.gethostname(), _boot_id(), os.getpid(), _start_ticks(os.getpid()) or 0)


def marker_key(key: str, upload_id: str) -> str:
    return MARKER_PREFIX + hashlib.sha256(f"{key}\0{upload_id}".encode()).hexdigest()[:40]


def marker_body(key: str, upload_id: str, owner: Owner) -> bytes:
    return json.dumps({"tzero_upload": 1, "key": key, "upload_id": upload_id, **owner._asdict()},
                      sort_keys=True).encode()


def put_marker(client: Any, uri: ObjectURI, upload_id: str, owner: Owner, attempts: int | None = None) -> None:
    body = marker_body(uri.key, upload_id, owner)
    retrying(f"marking the upload of {uri}", lambda: client.put_object(
        Bucket=uri.bucket, Key=marker_key(uri.key, upload_id), Body=body, ContentType="application/json"),
        attempts=attempts)


def remove_marker(client: Any, uri: ObjectURI, upload_id: str, attempts: int | None = None) -> None:
    retrying(f"removing the marker of the upload of {uri}",
             lambda: client.delete_object(Bucket=uri.bucket, Key=marker_key(uri.key, upload_id)), attempts=attempts)


def is_stale(marker: dict[str, Any], age_s: float, here: Owner) -> bool:
    """Whether the upload MARKER describes is nobody's any more, given the marker's AGE_S by
    the store's clock and HERE, this process's host and boot."""
    if age_s > STALE_AFTER_S:
        return True
    if marker.get("host") != here.host:
        return False
    if marker.get("boot_id") != here.boot_id:
        return True  # this host rebooted since: the process is gone
    pid, started = marker.get("pid"), marker.get("started")
    if not isinstance(pid, int) or not isinstance(started, int):
        return False
    return _start_ticks(pid) != started


def sweep(client: Any, bucket: str, here: Owner | None = None) -> list[str]:
    """Abort the stale uploads tzero marked in BUCKET and remove their markers; return their keys.

    StoreError if the markers cannot be listed; a marker that cannot be read, or an upload
    that cannot be aborted, is left for the next sweep."""
    here = here or this_process()
    swept = [_sweep_one(client, bucket, key, age_s, here) for key, age_s in _markers(client, bucket)]
    return [key for key in swept if key is not None]


def _sweep_one(client: Any, bucket: str, key: str, age_s: float, here: Owner) -> str | None:
    """Abort the upload the marker KEY names if it is stale, and remove the marker; its key, or None."""
    marker = _read_marker(client, bucket, key)
    if marker is None or not is_stale(marker, age_s, here):
        return None
    uri, upload_id = ObjectURI(bucket, str(marker["key"])), str(marker["upload_id"])
    try:
        retrying(f"aborting a stale upload of {uri}", lambda: client.abort_multipart_upload(
            Bucket=bucket, Key=uri.key, UploadId=upload_id))
    except StoreError as e:
        if e.code != "NoSuchUpload":
            return None
    retrying(f"removing a stale upload marker in {bucket}", lambda: client.delete_object(Bucket=bucket, Key=key))
    return uri.key


def _markers(client: Any, bucket: str) -> list[tuple[str, float]]:
    """(marker key, age in seconds by the store's clock) of every marker in BUCKET."""
    found: list[tuple[str, float]] = []
    token: str | None = None
    while True:
        args: dict[str, Any] = {"Bucket": bucket, "Prefix": MARKER_PREFIX}
        if token:
            args["ContinuationToken"] = token
        reply = _list_page(client, args)
        now = _server_time(reply)
        for item in reply.get("Contents", []):
            found.append((str(item["Key"]), (now - item["LastModified"]).total_seconds()))
        token = reply.get("NextContinuationToken")
        if not reply.get("IsTruncated") or not token:
            return found


def _list_page(client: Any, args: dict[str, Any]) -> Any:
    return retrying(f"listing tzero's unfinished uploads in s3://{args['Bucket']}",
                    lambda: client.list_objects_v2(**args))


def _read_marker(client: Any, bucket: str, key: str) -> dict[str, Any] | None:
    try:
        reply = retrying(f"reading the upload marker s3://{bucket}/{key}",
                         lambda: client.get_object(Bucket=bucket, Key=key))
        marker = json.loads(reply["Body"].read(1 << 16))
    except StoreError as e:
        if e.kind == NO_OBJECT:
            return None  # swept by another run meanwhile
        raise
    except ValueError:
        return None  # not one of ours after all: leave it alone
    if not isinstance(marker, dict) or marker.get("tzero_upload") != 1 or not marker.get("upload_id") \
            or not marker.get("key"):
        return None
    return marker


def _server_time(reply: dict[str, Any]) -> datetime.datetime:
    """The store's clock from a reply's Date header (this host's when there is none)."""
    date = reply.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
    if date:
        try:
            return email.utils.parsedate_to_datetime(date)
        except (TypeError, ValueError):
            pass
    return datetime.datetime.now(datetime.UTC)


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


def _start_ticks(pid: int) -> int | None:
    """When process PID started (clock ticks after boot), or None if there is no such process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2:].split()  # the command name may hold spaces and parentheses
    return int(fields[19])
