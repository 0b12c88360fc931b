"""Objects in an S3 store: s3:// URIs, a client made the way every S3 tool makes one,
failures in plain words, and one retry policy.

The controller and the backup plugin both import this. The plugin runs in nbdkit's embedded
Python, which sees Debian's boto3 (1.26) and nothing of the virtualenv, so boto3 is imported
only when a client is made, and only calls that 1.26 has are used.

Where a client's settings come from (docs/objectstore.md says it for users):
- credentials: boto3's own chain (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE
  and the shared credentials and config files, and so on);
- region: AWS_REGION, AWS_DEFAULT_REGION or the profile's; us-east-1 when none says (S3
  redirects a request to a bucket's own region);
- endpoint: AWS_ENDPOINT_URL_S3, then AWS_ENDPOINT_URL, then the profile's `s3 =
  endpoint_url` and `endpoint_url`, unless AWS_IGNORE_CONFIGURED_ENDPOINT_URLS is true.
  boto3 reads these itself only from 1.28 on: tzero reads them on every version;
- attempts: AWS_MAX_ATTEMPTS (default 8) for every request, with tzero's backoff.

No message says a secret: errors name the operation, the object and the store's error code.
"""

import os
import random
import re
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple, TypeVar
from urllib.parse import urlsplit

SCHEME = "s3://"
DEFAULT_ATTEMPTS = 8
BACKOFF_FIRST_S = 0.25  # then doubling, up to BACKOFF_MAX_S; each delay is jittered down to half
BACKOFF_MAX_S = 8.0
CONNECT_TIMEOUT_S = 10
READ_TIMEOUT_S = 60

_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")

# What StoreError.kind says, and so which exit status the commands give.
UNREACHABLE = "unreachable"  # connection refused, timed out, the store overloaded: may pass
NO_BUCKET = "no-bucket"
NO_OBJECT = "no-object"
DENIED = "denied"  # no credentials, wrong ones, or not allowed
CHANGED = "changed"  # the object was replaced while it was read
CONFIG = "config"  # the settings themselves are wrong (an unknown profile, a bad endpoint URL)
FAILED = "failed"  # anything else the store refused

_TRANSIENT_CODES = {"InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout", "Throttling",
                    "ThrottlingException", "RequestTimeTooSkewed", "500", "502", "503", "504"}
_DENIED_REASONS = {
    "InvalidAccessKeyId": "the store does not know this access key",
    "SignatureDoesNotMatch": "the secret key does not match the access key",
    "AccessDenied": "access denied",
    "403": "access denied",
    "AllAccessDisabled": "access denied",
    "InvalidToken": "the session token is not valid",
    "ExpiredToken": "the session token has expired",
}

T = TypeVar("T")


class ObjectURI(NamedTuple):
    bucket: str
    key: str

    def __str__(self) -> str:
        return f"{SCHEME}{self.bucket}/{self.key}"


class StoreError(Exception):
    """A request to the object store failed. The message is one line, without secrets;
    KIND is one of the constants above."""

    def __init__(self, message: str, kind: str, code: str = ""):
        super().__init__(message)
        self.kind = kind
        self.code = code  # the store's error code, when it gave one

    @property
    def transient(self) -> bool:
        return self.kind == UNREACHABLE


def is_s3_uri(text: str) -> bool:
    return text.startswith(SCHEME)


def parse_uri(text: str, key_required: bool = True) -> ObjectURI:
    """s3://BUCKET/KEY as its parts; ValueError naming what is wrong. Without KEY_REQUIRED,
    s3://BUCKET and s3://BUCKET/ give an empty key."""
    if not is_s3_uri(text):
        raise ValueError(f"{text!r} is not an s3://BUCKET/KEY URI")
    bucket, _, key = text[len(SCHEME):].partition("/")
    if not _BUCKET.fullmatch(bucket) or ".." in bucket:
        raise ValueError(f"{text}: {bucket!r} is not a bucket name (3 to 63 lower-case letters, digits, dots "
                         "and hyphens)")
    if key_required and (not key or key.endswith("/")):
        raise ValueError(f"{text}: give the object's key after the bucket, e.g. s3://{bucket}/nightly.tzb")
    if len(key.encode()) > 1024 or any(ord(c) < 32 or ord(c) == 127 for c in key):
        raise ValueError(f"{text}: an object key is at most 1024 bytes without control characters")
    return ObjectURI(bucket, key)


def endpoint_url(environ: Mapping[str, str], profile: Mapping[str, Any]) -> str | None:
    """The endpoint to use, from ENVIRON and the profile's settings PROFILE, as the SDKs
    that know these variables choose it; None means AWS's own."""
    if environ.get("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "").lower() == "true":
        return None
    services = profile.get("s3")
    candidates = [environ.get("AWS_ENDPOINT_URL_S3"), environ.get("AWS_ENDPOINT_URL"),
                  services.get("endpoint_url") if isinstance(services, dict) else None,
                  profile.get("endpoint_url")]
    for url in candidates:
        if url:
            return str(url)
    return None


def make_client(connections: int = 10) -> Any:
    """An S3 client (boto3, low level) with tzero's settings; StoreError(CONFIG) when the settings
    are wrong. The client is safe to share between threads; it never retries by itself."""
    import boto3
    import botocore.config
    import botocore.exceptions
    import botocore.session

    session = botocore.session.Session()
    try:
        profile = session.get_scoped_config()
        endpoint = endpoint_url(os.environ, profile)
        # Not session.get_config_variable("region"): on no setting it asks the instance metadata
        # service, a network call to a link-local address on every start.
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or profile.get("region") \
            or "us-east-1"
    except botocore.exceptions.BotoCoreError as e:
        raise StoreError(f"object store settings: {e}", CONFIG) from None
    if endpoint and urlsplit(endpoint).scheme not in ("http", "https"):
        raise StoreError(f"object store endpoint {_safe_url(endpoint)}: not an http:// or https:// URL", CONFIG)
    config = botocore.config.Config(
        retries={"total_max_attempts": 1}, connect_timeout=CONNECT_TIMEOUT_S, read_timeout=READ_TIMEOUT_S,
        max_pool_connections=connections,
        # Virtual-hosted names need DNS for every bucket, which stores at an endpoint of their own rarely have.
        s3={"addressing_style": "path"} if endpoint else None)
    try:
        return boto3.Session(botocore_session=session).client("s3", endpoint_url=endpoint, region_name=region,
                                                               config=config)
    except (botocore.exceptions.BotoCoreError, ValueError) as e:
        raise StoreError(f"object store settings: {e}", CONFIG) from None


def max_attempts(environ: Mapping[str, str] = os.environ) -> int:
    value = environ.get("AWS_MAX_ATTEMPTS", "")
    return int(value) if value.isdigit() and int(value) > 0 else DEFAULT_ATTEMPTS


def backoff_s(attempt: int) -> float:
    """How long to wait after failed attempt ATTEMPT (1, 2, ...): jittered, so that the
    threads of one upload do not all come back at the same instant."""
    ceiling = min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2.0 ** (attempt - 1))
    return ceiling / 2 + random.uniform(0, ceiling / 2)


def retrying(what: str, call: Callable[[], T], stop: threading.Event | None = None,
             attempts: int | None = None, on_retry: Callable[[], None] | None = None) -> T:
    """CALL(), again after a backoff while it fails for a reason that may pass, at most
    ATTEMPTS (AWS_MAX_ATTEMPTS) times in all, or until STOP is set; ON_RETRY() before each
    new attempt. Any failure leaves as StoreError "WHAT: reason"."""
    limit = attempts or max_attempts()
    attempt = 0
    while True:
        attempt += 1
        try:
            return call()
        except Exception as e:
            error = translate(e, what)
            if not error.transient or attempt >= limit or (stop is not None and stop.is_set()):
                raise error from None
        delay = backoff_s(attempt)
        if stop is not None:
            if stop.wait(delay):
                raise error
        else:
            time.sleep(delay)
        if on_retry is not None:
            on_retry()


def translate(e: BaseException, what: str) -> StoreError:
    """E, raised by boto3, botocore or urllib3, as a StoreError "WHAT: reason"."""
    if isinstance(e, StoreError):
        return e
    import botocore.exceptions as bx

    if isinstance(e, bx.ClientError):
        error = e.response.get("Error", {})
        code, message = str(error.get("Code", "")), str(error.get("Message", "")).rstrip(".")
        return _client_error(what, code, message)
    if isinstance(e, bx.NoCredentialsError | bx.PartialCredentialsError):
        return StoreError(f"{what}: no credentials found (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
                          "or AWS_PROFILE)", DENIED)
    if isinstance(e, bx.EndpointConnectionError | bx.ConnectTimeoutError | bx.ProxyConnectionError):
        endpoint = _safe_url(str(getattr(e, "kwargs", {}).get("endpoint_url", "")))
        return StoreError(f"{what}: cannot reach the object store at {endpoint}", UNREACHABLE)
    if isinstance(e, bx.ConnectionError | bx.HTTPClientError | bx.IncompleteReadError) or _is_urllib3(e):
        return StoreError(f"{what}: the connection to the object store failed ({type(e).__name__})", UNREACHABLE)
    if isinstance(e, bx.BotoCoreError):
        return StoreError(f"{what}: {e}", CONFIG if isinstance(e, bx.ProfileNotFound) else FAILED)
    if isinstance(e, ConnectionError | TimeoutError):
        return StoreError(f"{what}: the connection to the object store failed ({e.strerror or e})", UNREACHABLE)
    raise e


def _client_error(what: str, code: str, message: str) -> StoreError:
    error = _client_error_kind(what, code, message)
    error.code = code
    return error


def _client_error_kind(what: str, code: str, message: str) -> StoreError:
    if code in ("NoSuchBucket",):
        return StoreError(f"{what}: no such bucket", NO_BUCKET)
    if code in ("NoSuchKey", "404", "NotFound"):
        return StoreError(f"{what}: no such object", NO_OBJECT)
    if code in _DENIED_REASONS:
        return StoreError(f"{what}: {_DENIED_REASONS[code]}", DENIED)
    if code in ("PreconditionFailed", "412"):
        return StoreError(f"{what}: the object changed while it was being read", CHANGED)
    if code in _TRANSIENT_CODES:
        return StoreError(f"{what}: the object store answered {code}" + (f" ({message})" if message else ""),
                          UNREACHABLE)
    return StoreError(f"{what}: {code}" + (f": {message}" if message else ""), FAILED)


def _is_urllib3(e: BaseException) -> bool:
    """A failure urllib3 raised while a response body was read (botocore 1.29 lets them through)."""
    return type(e).__module__.startswith("urllib3.") and isinstance(e, Exception)


def _safe_url(url: str) -> str:
    """URL without user information, path or query: what may be shown."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return f"{parts.scheme}://{host}" if parts.scheme else url.split("@")[-1].split("/")[0]


def check_bucket(client: Any, uri: ObjectURI, what: str) -> None:
    """StoreError unless URI's bucket exists and these credentials may list it. A listing, not
    a HEAD: a HEAD's error has no body, so it could not say which key or secret is wrong."""
    retrying(what, lambda: client.list_objects_v2(Bucket=uri.bucket, Prefix=uri.key, MaxKeys=1))


def head_object(client: Any, uri: ObjectURI, what: str) -> dict[str, Any] | None:
    """The object's HEAD reply, or None when there is no object under the key; StoreError
    (NO_BUCKET when the bucket is what is missing) for anything else."""
    try:
        reply: dict[str, Any] = retrying(what, lambda: client.head_object(Bucket=uri.bucket, Key=uri.key))
        return reply
    except StoreError as e:
        if e.kind not in (NO_OBJECT, DENIED):
            raise
        denied = e
    check_bucket(client, uri, what)  # says which: the bucket, the key or the secret
    if denied.kind == DENIED:
        raise denied
    return None
