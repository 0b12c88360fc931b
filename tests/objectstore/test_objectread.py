"""Reading an object as a file, against a real store: front to back, at any offset, pinned to
one version of the object, and through a store that restarts mid-read."""

import os
import random

import pytest

from common.objectread import BLOCK, CACHE_BLOCKS, ObjectReader
from common.objectstore import CHANGED, NO_BUCKET, NO_OBJECT, ObjectURI, StoreError, make_client

SIZE = 3 * BLOCK + 12345


@pytest.fixture
def obj(store, bucket):
    data = random.Random(7).randbytes(SIZE)
    store.client().put_object(Bucket=bucket, Key="o/data", Body=data)
    return ObjectURI(bucket, "o/data"), data


@pytest.fixture
def client(store, monkeypatch):
    """tzero's own client (common/objectstore.py), made from the store's environment."""
    for name, value in store.env().items():
        monkeypatch.setenv(name, value)
    c = make_client()
    yield c
    c.close()


@pytest.fixture
def counted(client):
    """CLIENT, with .gets counting the GET requests it sends."""
    client.gets = 0

    def count(**_):
        client.gets += 1

    client.meta.events.register("before-send.s3.GetObject", count)
    return client


def test_objectread_front_to_back_reads_the_whole_object_and_cannot_seek(store, obj, client):
    uri, data = obj
    with ObjectReader(client, uri, sequential=True) as f:
        assert not f.seekable() and f.size == SIZE
        got = b"".join(iter(lambda: f.read(100_000), b""))
    assert got == data


def test_objectread_random_access_reads_any_offset(store, obj, client):
    uri, data = obj
    rnd = random.Random(1)
    with ObjectReader(client, uri, sequential=False) as f:
        assert f.seekable() and f.seek(0, os.SEEK_END) == SIZE
        for _ in range(60):
            offset, n = rnd.randrange(SIZE + 10), rnd.randrange(1, 2 * BLOCK)
            f.seek(offset)
            assert f.read(n) == data[offset:offset + n]
            assert f.tell() == min(SIZE, offset + n) if offset < SIZE else offset
        assert len(f._cache) <= CACHE_BLOCKS


def test_objectread_random_access_serves_small_reads_of_one_block_with_one_request(counted, obj, client):
    uri, data = obj
    client = counted
    with ObjectReader(client, uri, sequential=False) as f:
        before = client.gets
        for offset in (BLOCK + 5, BLOCK + 4000, BLOCK + 16, 2 * BLOCK - 80):
            f.seek(offset)
            assert f.read(64) == data[offset:offset + 64]
        assert client.gets - before == 1, "the header, trailer and index reads of a backup cost one GET each"


def test_objectread_random_access_reads_larger_than_half_the_cache_go_straight_through(store, bucket, client):
    data = random.Random(3).randbytes(CACHE_BLOCKS * BLOCK)
    store.client().put_object(Bucket=bucket, Key="big", Body=data)
    with ObjectReader(client, ObjectURI(bucket, "big"), sequential=False) as f:
        f.seek(10)
        assert f.read(len(data) - 20) == data[10:-10]
        assert not f._cache, "a large read is not kept"


def test_objectread_object_replaced_while_read_fails_rather_than_mix_versions(store, obj, client):
    uri, data = obj
    with ObjectReader(client, uri, sequential=False) as f:
        assert f.read(10) == data[:10]
        store.client().put_object(Bucket=uri.bucket, Key=uri.key, Body=b"another version " * 1000)
        f.seek(2 * BLOCK)
        with pytest.raises(StoreError, match="changed while it was being read") as caught:
            f.read(10)
    assert caught.value.kind == CHANGED


@pytest.mark.parametrize("sequential", [True, False])
def test_objectread_missing_object_and_missing_bucket_are_told_apart(store, bucket, sequential, client):
    with pytest.raises(StoreError, match="no such object") as caught:
        ObjectReader(client, ObjectURI(bucket, "nothing/here"), sequential)
    assert caught.value.kind == NO_OBJECT
    with pytest.raises(StoreError, match="no such bucket") as caught:
        ObjectReader(client, ObjectURI("no-such-bucket-here", "k"), sequential)
    assert caught.value.kind == NO_BUCKET


def test_objectread_front_to_back_resumes_where_it_stopped_when_the_store_restarts(store, bucket, monkeypatch, client):
    # Larger than what the kernel's socket buffers can hold, so the rest must come from a new GET.
    data = random.Random(5).randbytes(48 << 20)
    store.client().put_object(Bucket=bucket, Key="long", Body=data)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "20")
    with ObjectReader(client, ObjectURI(bucket, "long"), sequential=True) as f:
        head = f.read(1 << 20)
        store.kill()
        store.start()
        rest = b"".join(iter(lambda: f.read(4 << 20), b""))
    assert head + rest == data
