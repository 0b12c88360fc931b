"""A backup in an object store as a chain.py BackupSource: its bases are the objects beside it.

An incremental records its base's file name; in a bucket, "beside it" means the same key
prefix: the base of s3://B/host1/tue.tzb named mon.tzb is s3://B/host1/mon.tzb.
"""

import posixpath
from typing import BinaryIO

from common.objectstore import StoreError, head_object, make_client, parse_uri
from controller.errors import UsageError, store_error
from controller.restore.verify import open_file


class ObjectBackup:
    """The backup at the s3:// URI PATH, read front to back over one GET, or with RANDOM_ACCESS
    by ranged GETs (its trailer can then be read first: a base's always is)."""

    def __init__(self, path: str, random_access: bool):
        try:
            self.uri = parse_uri(path)
        except ValueError as e:
            raise UsageError(str(e)) from None
        # Set at start, never changed.
        self.path = path
        self.label = path
        self.seekable = random_access

    def open(self) -> BinaryIO:
        return open_file(self.path, random_access=self.seekable)

    def sibling(self, name: str) -> "ObjectBackup | None":
        key = posixpath.join(posixpath.dirname(self.uri.key), name)
        uri = self.uri._replace(key=key)
        try:
            client = make_client()
        except StoreError as e:
            raise store_error(e) from None
        try:
            found = head_object(client, uri, f"looking for {uri}")
        except StoreError as e:
            raise store_error(e) from None
        finally:
            client.close()
        return ObjectBackup(str(uri), random_access=True) if found is not None else None
