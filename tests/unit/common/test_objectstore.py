"""s3:// URIs, where the endpoint comes from, failures in plain words, and the retry policy."""

import re
import threading

import botocore.exceptions as bx
import pytest

from common import objectstore
from common.objectstore import (
    CONFIG,
    DENIED,
    FAILED,
    NO_BUCKET,
    NO_OBJECT,
    UNREACHABLE,
    ObjectURI,
    StoreError,
    endpoint_url,
    make_client,
    max_attempts,
    parse_uri,
    retrying,
    translate,
)


@pytest.mark.parametrize("text, bucket, key", [
    ("s3://backups/nightly.tzb", "backups", "nightly.tzb"),
    ("s3://my.bucket-1/host/2026/12/01.tzb", "my.bucket-1", "host/2026/12/01.tzb"),
    ("s3://abc/a b/ü.tzb", "abc", "a b/ü.tzb"),
])
def test_objectstore_parse_uri_splits_bucket_and_key(text, bucket, key):
    uri = parse_uri(text)
    assert uri == ObjectURI(bucket, key) and str(uri) == text


@pytest.mark.parametrize("text, words", [
    ("s3://backups", "give the object's key"),
    ("s3://backups/", "give the object's key"),
    ("s3://backups/dir/", "give the object's key"),
    ("s3://Backups/k", "not a bucket name"),
    ("s3://ab/k", "not a bucket name"),
    ("s3://a..b/k", "not a bucket name"),
    ("s3://-ab/k", "not a bucket name"),
    ("s3://abc/a\nb", "control characters"),
    ("s3://abc/" + "k" * 1025, "at most 1024 bytes"),
    ("/srv/b.tzb", "not an s3://BUCKET/KEY URI"),
])
def test_objectstore_parse_uri_refuses_what_is_not_an_object_naming_why(text, words):
    with pytest.raises(ValueError, match=words):
        parse_uri(text)


def test_objectstore_parse_uri_without_key_required_takes_a_bare_bucket():
    assert parse_uri("s3://backups/", key_required=False) == ObjectURI("backups", "")


@pytest.mark.parametrize("environ, profile, expected", [
    ({}, {}, None),
    ({"AWS_ENDPOINT_URL": "http://general:1"}, {}, "http://general:1"),
    ({"AWS_ENDPOINT_URL_S3": "http://s3:2", "AWS_ENDPOINT_URL": "http://general:1"}, {}, "http://s3:2"),
    ({"AWS_ENDPOINT_URL": "http://general:1"}, {"endpoint_url": "http://profile:3"}, "http://general:1"),
    ({}, {"endpoint_url": "http://profile:3"}, "http://profile:3"),
    ({}, {"endpoint_url": "http://profile:3", "s3": {"endpoint_url": "http://profile-s3:4"}}, "http://profile-s3:4"),
    ({"AWS_IGNORE_CONFIGURED_ENDPOINT_URLS": "true", "AWS_ENDPOINT_URL": "http://general:1"},
     {"endpoint_url": "http://profile:3"}, None),
])
def test_objectstore_endpoint_url_follows_the_sdks_order(environ, profile, expected):
    assert endpoint_url(environ, profile) == expected


def _clean_aws(monkeypatch, tmp_path):
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_DEFAULT_REGION", "AWS_REGION",
                 "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # never a link-local metadata service
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))


def test_objectstore_make_client_takes_the_endpoint_from_the_environment_on_this_boto3(monkeypatch, tmp_path):
    _clean_aws(monkeypatch, tmp_path)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    client = make_client()
    assert client.meta.endpoint_url == "http://127.0.0.1:9"
    assert client.meta.region_name == "us-east-1", "no region configured: AWS's default"


def test_objectstore_make_client_takes_the_endpoint_and_region_from_a_profile(monkeypatch, tmp_path):
    _clean_aws(monkeypatch, tmp_path)
    (tmp_path / "config").write_text("[profile offsite]\nregion = eu-west-3\nendpoint_url = http://127.0.0.1:7\n")
    monkeypatch.setenv("AWS_PROFILE", "offsite")
    client = make_client()
    assert client.meta.endpoint_url == "http://127.0.0.1:7" and client.meta.region_name == "eu-west-3"


@pytest.mark.parametrize("setting, value, words", [
    ("AWS_PROFILE", "nosuchprofile", "nosuchprofile"),
    ("AWS_ENDPOINT_URL", "ftp://127.0.0.1:9", "not an http:// or https:// URL"),
])
def test_objectstore_make_client_with_wrong_settings_says_which(monkeypatch, tmp_path, setting, value, words):
    _clean_aws(monkeypatch, tmp_path)
    monkeypatch.setenv(setting, value)
    with pytest.raises(StoreError, match=words) as caught:
        make_client()
    assert caught.value.kind == CONFIG


def client_error(code, message="", status=400):
    return bx.ClientError({"Error": {"Code": code, "Message": message},
                           "ResponseMetadata": {"HTTPStatusCode": status}}, "GetObject")


@pytest.mark.parametrize("error, kind, words", [
    (client_error("NoSuchBucket", "The specified bucket does not exist"), NO_BUCKET, "no such bucket"),
    (client_error("NoSuchKey"), NO_OBJECT, "no such object"),
    (client_error("InvalidAccessKeyId"), DENIED, "does not know this access key"),
    (client_error("SignatureDoesNotMatch"), DENIED, "secret key does not match"),
    (client_error("AccessDenied"), DENIED, "access denied"),
    (client_error("SlowDown", "Reduce your request rate", 503), UNREACHABLE, "answered SlowDown"),
    (client_error("503", "", 503), UNREACHABLE, "answered 503"),
    (client_error("EntityTooSmall", "Your proposed upload is smaller than the minimum"), FAILED, "EntityTooSmall"),
    (bx.NoCredentialsError(), DENIED, "no credentials found"),
    (bx.EndpointConnectionError(endpoint_url="http://127.0.0.1:1/bkt?list-type=2"), UNREACHABLE,
     "cannot reach the object store at http://127.0.0.1:1$"),
    (bx.ReadTimeoutError(endpoint_url="http://h:1/b"), UNREACHABLE, "connection to the object store failed"),
    (ConnectionResetError(104, "Connection reset by peer"), UNREACHABLE, "connection reset by peer"),
])
def test_objectstore_translate_says_what_a_user_can_act_on(error, kind, words):
    e = translate(error, "reading s3://bkt/k")
    assert e.kind == kind and str(e).startswith("reading s3://bkt/k: ")
    assert re.search(words, str(e), flags=re.IGNORECASE), str(e)
    assert e.transient == (kind == UNREACHABLE)


def test_objectstore_translate_never_shows_user_information_or_a_signed_query():
    e = translate(bx.EndpointConnectionError(
        endpoint_url="http://AKIDEXAMPLE:s3cr3t@store.example:9000/bkt/k?X-Amz-Signature=abcdef"), "reading")
    assert "s3cr3t" not in str(e) and "AKIDEXAMPLE" not in str(e) and "abcdef" not in str(e)
    assert "store.example:9000" in str(e)


def test_objectstore_translate_lets_a_bug_through():
    with pytest.raises(KeyError):
        translate(KeyError("x"), "reading")


@pytest.fixture
def quick_backoff(monkeypatch):
    monkeypatch.setattr(objectstore, "BACKOFF_FIRST_S", 0.001)
    monkeypatch.setattr(objectstore, "BACKOFF_MAX_S", 0.002)


def failing(errors, result="done"):
    """A call that raises ERRORS one by one, then returns RESULT; .calls counts."""
    def call():
        call.calls += 1
        if errors:
            raise errors.pop(0)
        return result
    call.calls = 0
    return call


def test_objectstore_retrying_retries_transient_failures_until_one_succeeds(quick_backoff):
    call = failing([client_error("SlowDown", status=503), bx.EndpointConnectionError(endpoint_url="http://h:1")])
    assert retrying("uploading", call, attempts=3) == "done" and call.calls == 3


def test_objectstore_retrying_gives_up_after_the_attempts_with_the_last_failure(quick_backoff):
    call = failing([client_error("InternalError", status=500)] * 5)
    with pytest.raises(StoreError, match="uploading: the object store answered InternalError"):
        retrying("uploading", call, attempts=4)
    assert call.calls == 4


def test_objectstore_retrying_never_repeats_a_failure_that_will_not_pass(quick_backoff):
    call = failing([client_error("AccessDenied", status=403)] * 3)
    with pytest.raises(StoreError, match="access denied"):
        retrying("uploading", call, attempts=5)
    assert call.calls == 1


def test_objectstore_retrying_stops_when_told(quick_backoff):
    stop = threading.Event()
    stop.set()
    call = failing([client_error("SlowDown", status=503)] * 3)
    with pytest.raises(StoreError):
        retrying("uploading", call, stop=stop, attempts=5)
    assert call.calls == 1


@pytest.mark.parametrize("value, attempts", [(None, 8), ("3", 3), ("1", 1), ("0", 8), ("many", 8)])
def test_objectstore_max_attempts_reads_aws_max_attempts(value, attempts):
    assert max_attempts({} if value is None else {"AWS_MAX_ATTEMPTS": value}) == attempts


def test_objectstore_backoff_doubles_up_to_its_ceiling_with_jitter():
    for attempt, ceiling in [(1, 0.25), (2, 0.5), (3, 1.0), (6, 8.0), (12, 8.0)]:
        delays = [objectstore.backoff_s(attempt) for _ in range(50)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
