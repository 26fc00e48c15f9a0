"""The `s3` object store: each object record's `artifact.data` stored once, keyed by digest.

Objects are content-addressed: the key is the record's `artifact.digest` exactly as the
record carries it (`sha256:<hex>`, RECORDS.md: "also the S3 object key"), so the value a
user sees on the event (`artifact.request.digest`) is the key to fetch, with no
transformation. The body is `artifact.data` (text as UTF-8), `Content-Type` is
`artifact.content_type`. Identical bytes are uploaded once: digests already stored are
remembered (a bounded LRU), and an unknown digest is looked up with HEAD before a PUT.
Credentials that may write but not read (HEAD answers 403) are handled by skipping HEAD
from then on.

`url_for(digest)` says where an object will be, so the pipeline can put
`artifact.{request,response}.url` on the summary event *before* either is exported:
the store's `access_url` template filled in, else `s3://<bucket>/<key>`.

Failures: boto3 is asked for a single attempt; `retry.Retrier` retries what can recover
(endpoint down, 5xx, throttling) for up to the policy's budget, and gives up at once on
what cannot (wrong access key or secret, access denied, no such bucket, wrong region,
no credentials found): `export()` then raises `SinkExportError` with one line saying what
is wrong and what to do, which `QueuedSink` counts and logs once per burst. The rest of
a batch is not tried after a failure (it would fail the same way). The distinct objects
of a batch are uploaded by a small thread pool, since each costs two round trips.
"""
from __future__ import annotations

import hashlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import boto3
import botocore.exceptions
from botocore.config import Config

from ..config.values import ENV_PLACEHOLDER, resolve_value_source
from ..records.model import Record
from .base import BurstLogger
from .retry import ExportFailed, Retrier, RetryPolicy, SinkExportError
from .retry import short_reason as _short

log = logging.getLogger("plaintap.sinks.s3")

AWS_DEFAULT_HOST = "s3.amazonaws.com"
DIGEST_PREFIX = "sha256:"

_NOT_FOUND = {"404", "NoSuchKey", "NotFound"}
_RETRYABLE_CODES = {"SlowDown", "RequestTimeout", "RequestTimeTooSkewed", "InternalError", "ServiceUnavailable",
                    "Throttling", "ThrottlingException", "RequestLimitExceeded", "503", "500", "502", "504"}


def artifact_bytes(value: Any) -> bytes | None:
    """`artifact.data` as bytes (text is UTF-8), None when absent."""
    if value is None:
        return None
    if isinstance(value, str):
        return value.encode("utf-8")
    return bytes(value)


def object_key(rec: Record, data: bytes) -> str:
    """The record's `artifact.digest`, or `sha256:<hex>` of `data` when the record has none."""
    digest = rec.attributes.get("artifact.digest")
    if isinstance(digest, str) and digest:
        return digest
    return DIGEST_PREFIX + hashlib.sha256(data).hexdigest()


def fill_access_url(template: str | None, *, scheme: str, endpoint: str, bucket: str, digest: str) -> str:
    """`template` with {{SCHEME}} {{ENDPOINT}} {{BUCKET}} {{DIGEST}} filled, else `s3://bucket/digest`."""
    if not template:
        return f"s3://{bucket}/{digest}"
    values = {"SCHEME": scheme, "ENDPOINT": endpoint, "BUCKET": bucket, "DIGEST": digest}
    return ENV_PLACEHOLDER.sub(lambda match: values.get(match.group(1), match.group(0)), template)


def classify_s3_error(err: Exception, *, bucket: str, endpoint: str, region: str) -> ExportFailed:
    """One-line error and retry decision for a failed S3 call."""
    if isinstance(err, botocore.exceptions.NoCredentialsError):
        return ExportFailed("no AWS credentials found for the s3 object store: set access_key and secret_key, "
                            "or configure the default AWS credential chain", retryable=False)
    if isinstance(err, botocore.exceptions.SSLError):
        return ExportFailed(f"TLS handshake with the S3 endpoint {endpoint} failed ({_short(err)}); "
                            "for a plain-http endpoint write http:// or set insecure: true", retryable=False)
    if isinstance(err, (botocore.exceptions.EndpointConnectionError, botocore.exceptions.ConnectionClosedError)):
        return ExportFailed(f"cannot connect to the S3 endpoint {endpoint} ({_short(err)})")
    if isinstance(err, (botocore.exceptions.ConnectTimeoutError, botocore.exceptions.ReadTimeoutError)):
        return ExportFailed(f"the S3 endpoint {endpoint} timed out")
    if isinstance(err, botocore.exceptions.ClientError):
        error = err.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        message = error.get("Message") or code
        if code == "InvalidAccessKeyId":
            return ExportFailed(f"S3 at {endpoint} does not know the access key (InvalidAccessKeyId); "
                                "check the s3 store's access_key", retryable=False)
        if code == "SignatureDoesNotMatch":
            return ExportFailed(f"S3 at {endpoint} rejected the request signature (SignatureDoesNotMatch); "
                                "check the s3 store's secret_key", retryable=False)
        if code == "NoSuchBucket":
            return ExportFailed(f"bucket {bucket!r} does not exist at {endpoint}; create it or fix `bucket`",
                                retryable=False)
        if code in ("AuthorizationHeaderMalformed", "PermanentRedirect", "IllegalLocationConstraintException"):
            return ExportFailed(f"bucket {bucket!r} is not in region {region!r} ({code}); set the store's region",
                                retryable=False)
        if code in ("AccessDenied", "403", "Forbidden") or status == 403:
            return ExportFailed(f"S3 at {endpoint} denied access to bucket {bucket!r} ({code}: {message}); "
                                "check the credentials and their permissions", retryable=False)
        if code in _RETRYABLE_CODES or (status is not None and status >= 500):
            return ExportFailed(f"S3 at {endpoint} answered {code or status}: {message}")
        return ExportFailed(f"S3 at {endpoint} refused the upload ({code or status}: {message})", retryable=False)
    if isinstance(err, botocore.exceptions.BotoCoreError):
        return ExportFailed(f"S3 upload to {endpoint} failed: {_short(err)}")
    return ExportFailed(f"S3 upload to {endpoint} failed: {_short(err)}", retryable=False)


class S3Sink:
    """Object records → objects in an S3-compatible bucket (`S3ObjectStore` config).

    Raises ConfigError (a key's value source names an unset environment variable) and
    ValueError (an endpoint boto3 cannot use) at construction.
    """

    def __init__(
        self,
        name: str,
        store_cfg: Any,
        *,
        retry: RetryPolicy | None = None,
        known_digests: int = 65536,
        concurrency: int = 8,
        connect_timeout: float = 5.0,
        read_timeout: float = 30.0,
    ) -> None:
        self.name = name
        self.bucket: str = store_cfg.bucket
        self.region: str = store_cfg.region
        self.scheme: str = store_cfg.scheme
        self.host: str = store_cfg.host
        self.endpoint_url: str = store_cfg.endpoint_url
        self.access_url: str | None = store_cfg.access_url
        keys: dict[str, str] = {}
        if store_cfg.access_key is not None and store_cfg.secret_key is not None:
            keys = {
                "aws_access_key_id": resolve_value_source(store_cfg.access_key, where=f"{name}.access_key"),
                "aws_secret_access_key": resolve_value_source(store_cfg.secret_key, where=f"{name}.secret_key"),
            }
        aws = self.host == AWS_DEFAULT_HOST
        config = Config(
            region_name=self.region,
            signature_version="s3v4",
            retries={"max_attempts": 1, "mode": "standard"},  # our Retrier retries
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            # S3-compatible servers (SeaweedFS, MinIO, …) want path-style addressing.
            s3={"addressing_style": "auto" if aws else "path"},
        )
        self._client = boto3.session.Session().client(
            "s3",
            # The default endpoint: let boto3 pick the region's endpoint itself.
            endpoint_url=None if aws and self.scheme == "https" else self.endpoint_url,
            config=config,
            **keys,
        )
        self._known: OrderedDict[str, None] = OrderedDict()
        self._known_max = known_digests
        self._head_allowed = True
        self._stop = threading.Event()
        self._closed = False
        self._lock = threading.Lock()
        self._retrier = Retrier(retry or RetryPolicy(), self._stop)
        self._burst = BurstLogger()
        self._skipped_burst = BurstLogger()
        self._concurrency = max(1, concurrency)
        self._executor: ThreadPoolExecutor | None = None
        self._stats_lock = threading.Lock()
        # uploaded: PUTs done; already_stored: found by HEAD; known: skipped from memory (or a
        # repeat within a batch); without_data: records with no artifact.data
        self.stats = {"uploaded": 0, "already_stored": 0, "known": 0, "without_data": 0}

    # -- what the pipeline asks before export

    def url_for(self, digest: str) -> str:
        """Where the object with this digest is (will be) stored, for `artifact.*.url`."""
        return fill_access_url(self.access_url, scheme=self.scheme, endpoint=self.host, bucket=self.bucket,
                               digest=digest)

    # -- the interface

    def export(self, batch: Sequence[Record]) -> None:
        """Store each record's artifact; raises SinkExportError when (part of) the batch is given up.

        Distinct objects of a batch are uploaded in parallel (`concurrency` threads): each
        costs a HEAD and a PUT round trip, which would otherwise cap the rate at a few
        dozen objects a second against a distant endpoint.
        """
        if self._closed:
            raise SinkExportError(f"{self.name}: sink is shut down", failed=len(batch))
        with self._lock:
            uploads: dict[str, tuple[bytes, str]] = {}
            records_per_key: dict[str, int] = {}
            for rec in batch:
                data = artifact_bytes(rec.attributes.get("artifact.data"))
                if data is None:
                    self._count("without_data")
                    self._skipped_burst(log, "%s sink: a record without artifact.data was not stored", self.name)
                    continue
                key = object_key(rec, data)
                if key in self._known:
                    self._known.move_to_end(key)
                    self._count("known")
                    continue
                if key in uploads:
                    self._count("known")  # the same bytes twice in one batch
                else:
                    content_type = rec.attributes.get("artifact.content_type") or "application/octet-stream"
                    uploads[key] = (data, str(content_type))
                records_per_key[key] = records_per_key.get(key, 0) + 1
            if not uploads:
                return
            abort = threading.Event()
            if len(uploads) == 1 or self._concurrency <= 1:
                outcomes = [self._upload(key, data, ctype, abort) for key, (data, ctype) in uploads.items()]
            else:
                outcomes = list(self._pool().map(lambda item: self._upload(item[0], *item[1], abort),
                                                 uploads.items()))
            failures = [(key, err) for key, err in zip(uploads, outcomes) if err is not None]
            for key, err in zip(uploads, outcomes):
                if err is None:
                    self._remember(key)
            if failures:
                failed = sum(records_per_key[key] for key, _ in failures)
                delivered = len(batch) - failed
                first = next((err for _, err in failures if not err.message.startswith("skipped:")), failures[0][1])
                suffix = f" ({delivered} of {len(batch)} records were stored)" if delivered else ""
                if self._stop.is_set():
                    suffix += " (shutting down)"
                failed_keys = {key for key, _ in failures}
                remaining = [rec for rec in batch
                             if (data := artifact_bytes(rec.attributes.get("artifact.data"))) is not None
                             and object_key(rec, data) in failed_keys]
                raise SinkExportError(first.message + suffix, failed=failed, delivered=delivered,
                                      retryable=first.retryable and not self._stop.is_set(), remaining=remaining)

    def force_flush(self, timeout: float = 5.0) -> bool:
        return True  # every upload is finished when export() returns

    def shutdown(self) -> None:
        """Interrupt any retry wait. Idempotent, safe before use."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        pool, self._executor = self._executor, None
        if pool is not None:
            pool.shutdown(wait=False)

    # -- internals

    def _on_retry(self, err: ExportFailed, wait: float) -> None:
        self._burst(log, "%s sink: %s; retrying (holding objects for up to %.0fs)", self.name, err.message,
                    self._retrier.policy.max_elapsed)

    def _pool(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self._concurrency, thread_name_prefix=f"{self.name}-put")
        return self._executor

    def _count(self, what: str) -> None:
        with self._stats_lock:
            self.stats[what] += 1

    def _upload(self, key: str, data: bytes, content_type: str, abort: threading.Event) -> ExportFailed | None:
        """None when stored (or already there); else the failure. Sets `abort` on a final failure so
        the rest of the batch is not tried (it would fail the same way)."""
        if abort.is_set():
            return ExportFailed("skipped: an earlier upload of the batch failed", retryable=False)
        try:
            self._retrier.run(lambda: self._store(key, data, content_type), self._on_retry)
        except ExportFailed as err:
            abort.set()
            return err
        return None

    def _remember(self, key: str) -> None:
        self._known[key] = None
        self._known.move_to_end(key)
        while len(self._known) > self._known_max:
            self._known.popitem(last=False)

    def _fail(self, err: Exception) -> ExportFailed:
        return classify_s3_error(err, bucket=self.bucket, endpoint=self.endpoint_url, region=self.region)

    def _store(self, key: str, data: bytes, content_type: str) -> None:
        if self._stop.is_set():
            raise ExportFailed(f"{self.name}: sink is shutting down", retryable=False)
        head_denied = False
        if self._head_allowed:
            try:
                self._client.head_object(Bucket=self.bucket, Key=key)
                self._count("already_stored")
                return
            except botocore.exceptions.ClientError as err:
                code = str(err.response.get("Error", {}).get("Code", ""))
                status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
                if code in _NOT_FOUND or status == 404:
                    pass
                elif status == 403:
                    head_denied = True  # maybe write-only credentials; the PUT will tell
                else:
                    raise self._fail(err) from None
            except (botocore.exceptions.BotoCoreError, ValueError) as err:
                raise self._fail(err) from None
        try:
            self._client.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType=content_type)
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError, ValueError) as err:
            raise self._fail(err) from None
        if head_denied:
            self._head_allowed = False  # these credentials can write but not read: stop asking
        self._count("uploaded")

    def __repr__(self) -> str:
        return f"S3Sink({self.name!r}, {self.endpoint_url}/{self.bucket})"
