"""The s3 sink's pure parts: object keys, `url_for` / access_url templates, error lines."""
from __future__ import annotations

import hashlib

import botocore.exceptions
import pytest

from plaintap.config.model import S3ObjectStore
from plaintap.records.model import SCOPE_OBJECTS, Record
from plaintap.sinks.s3 import S3Sink, artifact_bytes, classify_s3_error, fill_access_url, object_key

DIGEST = "sha256:" + "ab" * 32


def store(**cfg) -> S3ObjectStore:
    return S3ObjectStore.model_validate({"type": "s3", "bucket": "bkt", **cfg})


@pytest.mark.parametrize("template, expected", [
    (None, f"s3://bkt/{DIGEST}"),
    ("{{SCHEME}}://{{ENDPOINT}}/{{BUCKET}}/{{DIGEST}}", f"http://minio.local:9000/bkt/{DIGEST}"),
    ("https://cdn.example.com/{{ BUCKET }}/o/{{DIGEST}}?dl=1", f"https://cdn.example.com/bkt/o/{DIGEST}?dl=1"),
])
def test_fill_access_url(template, expected):
    assert fill_access_url(template, scheme="http", endpoint="minio.local:9000", bucket="bkt",
                           digest=DIGEST) == expected


@pytest.mark.parametrize("cfg, expected", [
    ({}, f"s3://bkt/{DIGEST}"),
    ({"endpoint": "http://127.0.0.1:8333", "access_url": "{{SCHEME}}://{{ENDPOINT}}/{{BUCKET}}/{{DIGEST}}"},
     f"http://127.0.0.1:8333/bkt/{DIGEST}"),
    ({"endpoint": "127.0.0.1:8333", "insecure": True, "access_url": "{{SCHEME}}://{{ENDPOINT}}/{{BUCKET}}/{{DIGEST}}"},
     f"http://127.0.0.1:8333/bkt/{DIGEST}"),
    ({"endpoint": "storage.example.com/", "access_url": "{{SCHEME}}://{{BUCKET}}.{{ENDPOINT}}/{{DIGEST}}"},
     f"https://bkt.storage.example.com/{DIGEST}"),
])
def test_url_for_uses_the_store(cfg, expected):
    sink = S3Sink("objects-s3", store(access_key={"type": "text", "value": "k"},
                                      secret_key={"type": "text", "value": "s"}, **cfg))
    assert sink.url_for(DIGEST) == expected
    sink.shutdown()
    sink.shutdown()


def test_object_key_is_the_records_digest_or_computed():
    data = b"GET / HTTP/1.1\r\n\r\n"
    with_digest = Record(SCOPE_OBJECTS, 1, "a", {"artifact.digest": DIGEST})
    without = Record(SCOPE_OBJECTS, 1, "a", {})
    assert object_key(with_digest, data) == DIGEST
    assert object_key(without, data) == "sha256:" + hashlib.sha256(data).hexdigest()


def test_artifact_bytes():
    assert artifact_bytes("ü") == "ü".encode()
    assert artifact_bytes(bytearray(b"\x00")) == b"\x00"
    assert artifact_bytes(None) is None


def _client_error(code: str, status: int, message: str = "m") -> botocore.exceptions.ClientError:
    return botocore.exceptions.ClientError(
        {"Error": {"Code": code, "Message": message}, "ResponseMetadata": {"HTTPStatusCode": status}}, "PutObject")


@pytest.mark.parametrize("err, retryable, contains", [
    (_client_error("InvalidAccessKeyId", 403), False, "does not know the access key"),
    (_client_error("SignatureDoesNotMatch", 403), False, "check the s3 store's secret_key"),
    (_client_error("NoSuchBucket", 404), False, "bucket 'bkt' does not exist at http://h:1"),
    (_client_error("AccessDenied", 403), False, "denied access to bucket 'bkt'"),
    (_client_error("AuthorizationHeaderMalformed", 400), False, "is not in region 'us-east-1'"),
    (_client_error("SlowDown", 503), True, "answered SlowDown"),
    (_client_error("InternalError", 500), True, "answered InternalError"),
    (_client_error("EntityTooLarge", 400), False, "refused the upload (EntityTooLarge"),
    (botocore.exceptions.EndpointConnectionError(endpoint_url="http://h:1"), True, "cannot connect to the S3 endpoint"),
    (botocore.exceptions.NoCredentialsError(), False, "no AWS credentials found"),
    (botocore.exceptions.ReadTimeoutError(endpoint_url="http://h:1"), True, "timed out"),
])
def test_classify_s3_error(err, retryable, contains):
    failure = classify_s3_error(err, bucket="bkt", endpoint="http://h:1", region="us-east-1")
    assert contains in failure.message
    assert failure.retryable is retryable
    assert "\n" not in failure.message
