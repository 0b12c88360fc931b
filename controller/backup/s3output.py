"""`-o s3://BUCKET/KEY`: the backup stream as one multipart upload, an object only once complete.

The same surface as BackupOutput (open, write, flush, commit, discard), so the stream
writer and `tzero backup` treat both alike. What S3 adds:

- Before anything is frozen (the constructor): the bucket must exist and answer, KEY must
  not exist unless --force, and the stale uploads earlier runs left in the bucket are swept
  (s3uploads.py). The part size is settled from the plan (s3parts.py) before open().
- open(): creates the upload and its marker; starts STREAMS upload threads and the thread
  that renews the marker.
- write() (the copy loop): fills a part buffer; a full part goes to the upload threads,
  each sent with retries and backoff (common/objectstore.py). When every buffer is taken,
  write() waits: backpressure, as from a slow disk.
- flush(): sends the last part and waits for all; commit(): completes the upload (with
  If-None-Match unless --force, so a KEY that appeared meanwhile is not replaced) and
  removes the marker. The object appears under KEY at that instant, whole.
- discard(): stops the threads, aborts the upload, removes the marker. If the store cannot
  be told, it returns a note saying so; the marker lets the next run sweep the upload.

Memory: STREAMS + 1 buffers of the part size, made at open() and reused; nothing else
grows with the stream (the parts' ETags, 10,000 at most).

Threads and fields: see the groups in __init__. The copy loop (main thread) calls every
method; an upload thread owns a part from the moment it takes it until it hands the
buffer back; the renewer touches only the marker.
"""

import queue
import threading
from typing import Any

from common.fileio import Buffer
from common.objectstore import NO_BUCKET, StoreError, check_bucket, head_object, make_client, parse_uri, retrying
from common.units import human_size
from controller.backup import s3uploads
from controller.backup.s3parts import MAX_PARTS, capacity, check_part_size
from controller.errors import TzeroError, UsageError, store_error

DEFAULT_STREAMS = 2
ABORT_ATTEMPTS = 3  # when the store is failing, say so soon rather than retry for long


class PartBody:
    """A part's bytes as the file botocore reads (to hash, then to send) without a copy."""

    def __init__(self, view: memoryview):
        self._view = view
        self._pos = 0

    def read(self, n: int = -1) -> bytes:
        end = len(self._view) if n is None or n < 0 else min(len(self._view), self._pos + n)
        data = bytes(self._view[self._pos:end])
        self._pos = end
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        self._pos = offset + (0, self._pos, len(self._view))[whence]
        return self._pos

    def tell(self) -> int:
        return self._pos

    def __len__(self) -> int:
        return len(self._view)


class S3Output:
    def __init__(self, target: str, force: bool, part_size: int | None = None, streams: int = DEFAULT_STREAMS):
        try:
            uri = parse_uri(target)
        except ValueError as e:
            raise UsageError(str(e)) from None
        if part_size is not None:
            check_part_size(part_size)
        if not 1 <= streams <= 16:
            raise UsageError(f"--upload-streams {streams}: from 1 to 16")
        # Set at start, never changed (part_size: by set_part_size, before open).
        self.target = target
        self.uri = uri
        self.force = force
        self.streams = streams
        self.part_size = part_size
        self.requested_part_size = part_size
        self.client = self._checked(lambda: make_client(connections=streams + 2))
        self.swept: list[str] = []  # keys of stale uploads this run removed
        # Copy loop only.
        self.upload_id: str | None = None
        self._part: bytearray | None = None  # the part being filled, or None
        self._fill = 0
        self._next_part = 1
        self.bytes_written = 0
        self.parts = 0  # how many the completed upload had
        self._threads: list[threading.Thread] = []
        # Shared by the copy loop and the upload threads; the queues carry their own locks.
        self._free: queue.Queue[bytearray] = queue.Queue()  # buffers nobody uses
        self._todo: queue.Queue[tuple[int, bytearray, int] | None] = queue.Queue()  # parts to send
        self._stop = threading.Event()  # set when the upload is being discarded
        self._lock = threading.Lock()  # guards _etags, _error and retries
        self._etags: dict[int, str] = {}
        self.retries = 0  # part uploads sent again after a failure that may pass
        self._error: TzeroError | None = None  # the first failure of an upload thread
        self._precheck()

    @property
    def label(self) -> str:
        return str(self.uri)

    def set_part_size(self, size: int) -> None:
        assert self.upload_id is None, "the part size is settled before the upload starts"
        self.part_size = size

    # -- before anything is frozen ------------------------------------------------

    def _precheck(self) -> None:
        what = f"backing up to {self.uri}"
        self._checked(lambda: check_bucket(self.client, self.uri, what), missing_is_usage=True)
        if not self.force and self._checked(lambda: head_object(self.client, self.uri, what)) is not None:
            raise UsageError(f"{self.uri} exists; use --force to replace it")
        self.swept = self._checked(lambda: s3uploads.sweep(self.client, self.uri.bucket))

    def _checked(self, call: Any, missing_is_usage: bool = False) -> Any:
        """CALL(), its StoreError as the TzeroError a user sees; with MISSING_IS_USAGE a missing
        bucket is a usage error, as a missing directory is for -o FILE."""
        try:
            return call()
        except StoreError as e:
            if missing_is_usage and e.kind == NO_BUCKET:
                raise UsageError(str(e)) from None
            raise store_error(e) from None

    # -- the upload ---------------------------------------------------------------

    def open(self) -> None:
        assert self.part_size is not None, "set_part_size comes first"
        reply = self._checked(lambda: retrying(f"starting the upload of {self.uri}", lambda: self.client.
                                               create_multipart_upload(Bucket=self.uri.bucket, Key=self.uri.key,
                                                                       ContentType="application/octet-stream")))
        self.upload_id = str(reply["UploadId"])
        try:
            self._checked(lambda: s3uploads.put_marker(self.client, self.uri, self.upload_id, s3uploads.this_process()))
        except TzeroError:
            self._abort_quietly()
            raise
        for _ in range(self.streams + 1):
            self._free.put(bytearray(self.part_size))
        self._threads = [threading.Thread(target=self._sender, name=f"s3-upload-{i}", daemon=True)
                         for i in range(self.streams)]
        self._threads.append(threading.Thread(target=self._renewer, name="s3-marker", daemon=True))
        for t in self._threads:
            t.start()

    def write(self, buf: Buffer) -> int:
        """Take all of BUF (the stream writer's file); the first failure of an upload thread leaves here."""
        assert self.part_size is not None and self.upload_id is not None, "written only after open()"
        view = memoryview(buf).cast("B")
        taken = len(view)
        while len(view):
            self._raise_failure()
            if self._part is None:
                self._part, self._fill = self._free.get(), 0
                self._raise_failure()
            n = min(len(view), self.part_size - self._fill)
            self._part[self._fill:self._fill + n] = view[:n]
            self._fill += n
            view = view[n:]
            if self._fill == self.part_size:
                self._send()
        self.bytes_written += taken
        return taken

    def flush(self) -> None:
        """Send the last part and wait until every part is in the store."""
        if self._part is not None and (self._fill or self._next_part == 1):
            self._send()
        self._todo.join()
        self._raise_failure()

    def commit(self) -> None:
        """Complete the upload: the object appears under KEY, whole. Then end the threads."""
        self.flush()
        self._end_threads()
        parts = [{"PartNumber": n, "ETag": self._etags[n]} for n in sorted(self._etags)]
        assert [p["PartNumber"] for p in parts] == list(range(1, len(parts) + 1)), "every part was sent"
        self._checked(lambda: self._complete(parts))
        self.parts = len(parts)
        try:
            assert self.upload_id is not None, "committed after open()"
            s3uploads.remove_marker(self.client, self.uri, self.upload_id, attempts=ABORT_ATTEMPTS)
        except StoreError:
            pass  # the upload is complete; a leftover marker is swept by the next run
        self.upload_id = None

    def discard(self) -> str | None:
        """Leave nothing behind: stop sending, abort the upload, remove its marker. Returns a
        note for the user when the store could not be told (the upload then waits for the
        next run's sweep), else None."""
        self._stop.set()
        self._end_threads()
        if self.upload_id is None:
            return None
        try:
            self._abort()
        except StoreError as e:
            return (f"the unfinished upload could not be aborted ({e}); the next tzero backup to "
                    f"s3://{self.uri.bucket} removes it")
        return None

    # -- the copy loop's helpers --------------------------------------------------

    def _send(self) -> None:
        assert self._part is not None and self.part_size is not None, "a part is being filled"
        if self._next_part > MAX_PARTS:
            raise TzeroError(f"the backup outgrew {MAX_PARTS} parts of {human_size(self.part_size)} "
                             f"({human_size(capacity(self.part_size))}); use a larger --part-size")
        self._todo.put((self._next_part, self._part, self._fill))
        self._next_part += 1
        self._part = None
        self._fill = 0

    def _raise_failure(self) -> None:
        with self._lock:
            error = self._error
        if error is not None:
            raise error

    def _complete(self, parts: list[dict[str, Any]]) -> None:
        assert self.upload_id is not None, "completed after open()"
        upload_id = self.upload_id
        args = {"Bucket": self.uri.bucket, "Key": self.uri.key, "UploadId": upload_id,
                "MultipartUpload": {"Parts": parts}}
        what = f"completing the upload of {self.uri}"
        try:
            retrying(what, lambda: self._completer(not self.force)(**args))
        except StoreError as e:
            if e.code == "PreconditionFailed":
                raise UsageError(f"{self.uri} appeared while the backup ran; use --force to replace it") from None
            if e.code == "NotImplemented" and not self.force:  # a store without conditional writes
                if head_object(self.client, self.uri, what) is not None:
                    raise UsageError(f"{self.uri} appeared while the backup ran; use --force to replace it") from None
                retrying(what, lambda: self.client.complete_multipart_upload(**args))
            elif e.code == "NoSuchUpload" and self._completed_meanwhile():
                return  # an earlier attempt completed it; only its reply was lost
            else:
                raise

    def _completer(self, if_none_match: bool) -> Any:
        """complete_multipart_upload, with If-None-Match: * when IF_NONE_MATCH (boto3 1.26 has
        no parameter for it, so the header is added to the request)."""
        if not if_none_match:
            return self.client.complete_multipart_upload

        def complete(**args: Any) -> Any:
            def header(request: Any, **_: Any) -> None:
                request.headers["If-None-Match"] = "*"

            events = self.client.meta.events
            events.register_first("before-sign.s3.CompleteMultipartUpload", header, unique_id="tzero-if-none-match")
            try:
                return self.client.complete_multipart_upload(**args)
            finally:
                events.unregister("before-sign.s3.CompleteMultipartUpload", unique_id="tzero-if-none-match")

        return complete

    def _completed_meanwhile(self) -> bool:
        head = head_object(self.client, self.uri, f"completing the upload of {self.uri}")
        return head is not None and int(head["ContentLength"]) == self.bytes_written

    def _abort(self) -> None:
        assert self.upload_id is not None, "aborted after open()"
        upload_id = self.upload_id
        try:
            retrying(f"aborting the upload of {self.uri}", lambda: self.client.abort_multipart_upload(
                Bucket=self.uri.bucket, Key=self.uri.key, UploadId=upload_id), attempts=ABORT_ATTEMPTS)
        except StoreError as e:
            if e.code != "NoSuchUpload":
                raise
        self.upload_id = None
        try:
            s3uploads.remove_marker(self.client, self.uri, upload_id, attempts=ABORT_ATTEMPTS)
        except StoreError:
            pass  # the upload is gone; the next sweep removes a marker whose upload is gone

    def _abort_quietly(self) -> None:
        try:
            self._abort()
        except StoreError:
            pass

    def _end_threads(self) -> None:
        self._stop.set()
        for _ in range(self.streams):
            self._todo.put(None)
        for t in self._threads:
            t.join()
        self._threads = []

    # -- the other threads --------------------------------------------------------

    def _sender(self) -> None:
        """An upload thread: send parts until told to stop; the first failure is kept for write()."""
        while True:
            item = self._todo.get()
            if item is None:
                self._todo.task_done()
                return
            number, buf, length = item
            try:
                if not self._stop.is_set() and not self._failed():
                    self._send_part(number, memoryview(buf)[:length])
            except StoreError as e:
                self._fail(store_error(e))
            except BaseException as e:  # a bug: still hand it to the copy loop, which reports it
                self._fail(TzeroError(f"internal error in an upload thread: {type(e).__name__}: {e}"))
            finally:
                self._free.put(buf)
                self._todo.task_done()

    def _send_part(self, number: int, view: memoryview) -> None:
        assert self.upload_id is not None, "parts are sent between open() and the end"
        upload_id = self.upload_id
        reply = retrying(f"uploading part {number} of {self.uri}", lambda: self.client.upload_part(
            Bucket=self.uri.bucket, Key=self.uri.key, UploadId=upload_id, PartNumber=number,
            Body=PartBody(view)), stop=self._stop, on_retry=self._count_retry)
        with self._lock:
            self._etags[number] = str(reply["ETag"])

    def _count_retry(self) -> None:
        with self._lock:
            self.retries += 1

    def _failed(self) -> bool:
        with self._lock:
            return self._error is not None

    def _fail(self, error: TzeroError) -> None:
        with self._lock:
            if self._error is None:
                self._error = error

    def _renewer(self) -> None:
        """Renew the marker, so that no other host's sweep takes this live upload for stale."""
        owner, upload_id = s3uploads.this_process(), self.upload_id
        assert upload_id is not None, "started by open() once the upload exists"
        while not self._stop.wait(s3uploads.RENEW_S):
            try:
                s3uploads.put_marker(self.client, self.uri, upload_id, owner, attempts=1)
            except StoreError:
                pass  # the parts' own failures say what is wrong with the store
