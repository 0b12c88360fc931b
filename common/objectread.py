"""An object in an S3 store read as a binary file: front to back over one streaming GET, or
at any position through ranged GETs and a small cache.

Either way the reader is pinned to the version of the object it found when it opened
(every later request carries If-Match with that ETag): an object replaced while it is read
fails with StoreError(CHANGED) instead of handing out bytes of two versions.
"""

import errno
import io
import time
from collections import OrderedDict
from typing import Any

from common.objectstore import (
    NO_OBJECT,
    UNREACHABLE,
    ObjectURI,
    StoreError,
    backoff_s,
    head_object,
    make_client,
    max_attempts,
    parse_uri,
    retrying,
    translate,
)

BLOCK = 256 << 10  # random access fetches whole blocks of this size...
CACHE_BLOCKS = 16  # ...and keeps this many (4 MiB); a read over half of that is not cached


class ObjectReader(io.RawIOBase):
    """One object of URI, read-only.

    sequential=True: one streaming GET read as the caller asks, not seekable. A transient
    failure mid-way (a reset connection, a timeout) opens the GET again where it stopped,
    at most AWS_MAX_ATTEMPTS times in a row. This is what verify and restore use.

    sequential=False: seekable; a read is served from a cache of BLOCK-aligned blocks,
    the missing ones fetched by one ranged GET, so the small reads of a header, a trailer or
    an index cost one request. This is what ls and serve-backup use.

    Failures leave as StoreError. Not thread-safe: the caller serialises reads (the backup
    plugin serves one request at a time). Memory: at most CACHE_BLOCKS blocks plus the read
    in hand.
    """

    def __init__(self, client: Any, uri: ObjectURI, sequential: bool, owns_client: bool = False):
        super().__init__()
        # Set at open, never changed.
        self.client = client
        self.owns_client = owns_client  # close() closes the client too
        self.uri = uri
        self.sequential = sequential
        # The caller's thread only.
        self._pos = 0
        self._body: Any = None  # the streaming GET's body (sequential only), None when not open
        self._cache: OrderedDict[int, bytes] = OrderedDict()  # block number -> bytes, oldest first
        try:
            if sequential:
                self._body, self.size, self.etag = self._open_stream(0)
            else:
                head = head_object(client, uri, f"opening {uri}")
                if head is None:
                    raise StoreError(f"opening {uri}: no such object", NO_OBJECT)
                self.size, self.etag = int(head["ContentLength"]), str(head["ETag"])
        except BaseException:
            self.close()
            raise

    # -- io.RawIOBase -------------------------------------------------------------

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return not self.sequential

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if self.sequential:
            raise OSError(errno.ESPIPE, f"{self.uri} is read front to back")
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}[whence]
        if base + offset < 0:
            raise OSError(errno.EINVAL, "negative position")
        self._pos = base + offset
        return self._pos

    def read(self, size: int | None = -1, /) -> bytes:
        end = self.size if size is None or size < 0 else min(self.size, self._pos + size)
        if end <= self._pos:
            return b""
        data = self._stream_read(end - self._pos) if self.sequential else self._range(self._pos, end)
        self._pos += len(data)
        return data

    def readinto(self, buffer: Any, /) -> int:
        data = self.read(len(memoryview(buffer)))
        memoryview(buffer).cast("B")[:len(data)] = data
        return len(data)

    def close(self) -> None:
        self._drop_body()
        self._cache.clear()
        if self.owns_client and not self.closed:
            self.client.close()
        super().close()

    # -- front to back ------------------------------------------------------------

    def _open_stream(self, start: int, attempts: int | None = None) -> tuple[Any, int, str]:
        """A GET of the object from START to its end: (body, object size, ETag)."""
        args: dict[str, Any] = {"Bucket": self.uri.bucket, "Key": self.uri.key}
        if start:
            args.update(Range=f"bytes={start}-", IfMatch=self.etag)
        reply = retrying(f"reading {self.uri}" if start else f"opening {self.uri}",
                         lambda: self.client.get_object(**args), attempts=attempts)
        size = start + int(reply["ContentLength"])
        return reply["Body"], size, str(reply["ETag"])

    def _stream_read(self, n: int) -> bytes:
        parts: list[bytes] = []
        got = failures = 0
        while got < n:
            try:
                if self._body is None:  # one attempt: this loop is the one that retries
                    self._body = self._open_stream(self._pos + got, attempts=1)[0]
                data = self._body.read(n - got)
                if not data:
                    raise StoreError(f"reading {self.uri}: the object store sent less than it announced",
                                     UNREACHABLE)
            except Exception as e:
                error = translate(e, f"reading {self.uri} at byte {self._pos + got}")
                self._drop_body()
                failures += 1
                if not error.transient or failures >= max_attempts():
                    raise error from None
                time.sleep(backoff_s(failures))
                continue
            failures = 0
            parts.append(data)
            got += len(data)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _drop_body(self) -> None:
        if self._body is not None:
            body, self._body = self._body, None
            try:
                body.close()
            except Exception:
                pass  # a broken connection is dropped either way

    # -- random access ------------------------------------------------------------

    def _range(self, start: int, end: int) -> bytes:
        if end - start > BLOCK * CACHE_BLOCKS // 2:
            return self._get(start, end)
        first, last = start // BLOCK, (end - 1) // BLOCK
        missing = [b for b in range(first, last + 1) if b not in self._cache]
        fetched: dict[int, bytes] = {}
        if missing:
            low, high = missing[0] * BLOCK, min((missing[-1] + 1) * BLOCK, self.size)
            data = self._get(low, high)
            fetched = {b: data[b * BLOCK - low:(b + 1) * BLOCK - low] for b in range(missing[0], missing[-1] + 1)}
        blocks = [fetched[b] if b in fetched else self._cache[b] for b in range(first, last + 1)]
        for b in range(first, last + 1):
            self._cache[b] = blocks[b - first]
            self._cache.move_to_end(b)
        while len(self._cache) > CACHE_BLOCKS:
            self._cache.popitem(last=False)
        joined = blocks[0] if len(blocks) == 1 else b"".join(blocks)
        skip = start - first * BLOCK
        return joined[skip:skip + end - start]

    def _get(self, start: int, end: int) -> bytes:
        """Bytes START to END of the object, by one ranged GET (retried whole)."""
        what = f"reading {self.uri} at byte {start}"

        def get() -> bytes:
            reply = self.client.get_object(Bucket=self.uri.bucket, Key=self.uri.key, Range=f"bytes={start}-{end - 1}",
                                           IfMatch=self.etag)
            data: bytes = reply["Body"].read()
            if len(data) != end - start:
                raise StoreError(f"{what}: asked for {end - start} bytes, the object store sent {len(data)}",
                                 UNREACHABLE)
            return data

        return retrying(what, get)


def open_object(text: str, sequential: bool) -> ObjectReader:
    """The object of the s3:// URI TEXT, opened for reading (a new client); ValueError for a
    URI that is not one, StoreError for the rest."""
    return ObjectReader(make_client(), parse_uri(text), sequential, owns_client=True)
