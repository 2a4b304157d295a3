"""The S3 source: an S3-compatible bucket (AWS, Spaces, MinIO …), listed with
``ListObjectsV2`` only — a delimited listing of the prefix, then one listing per
top-level folder, in parallel — through the fast page reader of :mod:`.s3pages`."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable, Iterable, Iterator
from urllib.parse import urlsplit, urlunsplit

from ..engine.shards import Shard
from ..errors import SourceError
from ..objects import ObjectInfo

Progress = Callable[[int], None]


# Retries are botocore's own ("standard" mode retries throttling such as SlowDown,
# 5xx answers and dropped connections with exponential backoff and jitter).
# Attempts count the first one; AWS_MAX_ATTEMPTS (the AWS SDKs' own variable) changes
# the default, as it does for any other AWS tool.
S3_MAX_ATTEMPTS = 10
S3_CONNECT_TIMEOUT = 5
S3_READ_TIMEOUT = 60


def _default_attempts() -> int:
    try:
        n = int(os.environ.get("AWS_MAX_ATTEMPTS", ""))
    except ValueError:
        return S3_MAX_ATTEMPTS
    return n if n >= 1 else S3_MAX_ATTEMPTS


@dataclass
class S3Source:
    """``s3://BUCKET[/PREFIX]`` through ``list_objects_v2``.

    Credentials come only from boto3's standard chain. The endpoint is
    ``endpoint_url`` when given (the CLI resolves flag → ``AWS_ENDPOINT_URL_S3`` /
    ``AWS_ENDPOINT_URL`` → config), else whatever botocore finds in the environment. Top-level folders are listed concurrently by up to
    ``max_workers`` threads; the result does not depend on the order.
    """

    bucket: str
    prefix: str = ""
    endpoint_url: str | None = None
    region: str | None = None
    addressing_style: str | None = None
    max_workers: int = 8
    max_attempts: int = field(default_factory=_default_attempts)  # the first attempt included
    connect_timeout: float = S3_CONNECT_TIMEOUT
    read_timeout: float = S3_READ_TIMEOUT
    # Told about each retry as botocore decides it (the CLI: a line on stderr, when a
    # terminal): an unreachable endpoint otherwise means many seconds of silence.
    progress: Callable[[str], None] | None = None

    def __post_init__(self) -> None:
        self._client = None

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    @property
    def root(self) -> str:
        return self.prefix

    @property
    def public_url(self) -> str:
        """The bucket's own URL, the default base of media URLs; no request is made.

        AWS: ``https://BUCKET.s3.REGION.amazonaws.com`` (path-style
        ``https://s3.REGION.amazonaws.com/BUCKET`` for a name with dots, which the
        virtual host's TLS certificate does not cover). Another endpoint: path-style
        ``ENDPOINT/BUCKET``, or ``BUCKET.HOST`` with ``addressing_style: virtual``.
        """
        endpoint = self.endpoint_url
        if not endpoint:  # what botocore resolved: AWS, or an endpoint from the AWS config file
            meta = self.client().meta
            endpoint = meta.endpoint_url
            if urlsplit(endpoint).hostname.endswith(".amazonaws.com"):
                region = meta.region_name or "us-east-1"
                if "." in self.bucket:
                    return f"https://s3.{region}.amazonaws.com/{self.bucket}"
                return f"https://{self.bucket}.s3.{region}.amazonaws.com"
        parts = urlsplit(endpoint.rstrip("/"))
        if self.addressing_style == "virtual":
            return urlunsplit((parts.scheme, f"{self.bucket}.{parts.netloc}", parts.path, "", ""))
        return urlunsplit((parts.scheme, parts.netloc, f"{parts.path}/{self.bucket}", "", ""))

    def client(self):
        if self._client is None:
            import boto3
            import botocore.session
            from botocore.config import Config

            config = Config(
                retries={"total_max_attempts": self.max_attempts, "mode": "standard"},
                connect_timeout=self.connect_timeout,
                read_timeout=self.read_timeout,
                max_pool_connections=max(10, self.max_workers + 2),
                s3={"addressing_style": self.addressing_style or "auto"},
            )
            from .s3pages import ListingParserFactory

            core = botocore.session.get_session()
            # ListObjectsV2 pages are read by our parser (reconciler.s3pages), every
            # other answer by botocore's. Timestamps stay text: ISO 8601 already, and
            # all a plan needs (botocore would parse each with dateutil).
            factory = ListingParserFactory()
            factory.set_parser_defaults(timestamp_parser=str)
            core.register_component("response_parser_factory", factory)
            session = boto3.session.Session(botocore_session=core)
            self._client = session.client(
                "s3",
                # None lets botocore read AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL itself.
                endpoint_url=self.endpoint_url or None,
                region_name=self.region,
                config=config,
            )
            if self.progress is not None:
                self._client.meta.events.register("needs-retry.s3.ListObjectsV2", self._report_retry)
                # Inventory reports are read through the same client (reconciler.sources.inventory).
                self._client.meta.events.register("needs-retry.s3.GetObject", self._report_retry)
        return self._client

    def _report_retry(self, **kwargs) -> None:
        """A ``needs-retry`` handler that only reports: botocore's own retry handler
        (on the same event) decides and sleeps. It asks botocore's standard retry
        conditions the same question, and returns None, so it never changes the answer."""
        from botocore import exceptions as x
        from botocore.retries.standard import RetryEventAdapter, StandardRetryConditions

        context = RetryEventAdapter().create_retry_context(**kwargs)
        if not StandardRetryConditions(self.max_attempts).is_retryable(context):
            return None
        e = context.caught_exception
        if isinstance(e, (x.EndpointConnectionError, x.ConnectTimeoutError)):
            why = "cannot reach the endpoint"
        elif isinstance(e, x.ReadTimeoutError):
            why = "no answer in time"
        elif e is not None:
            why = type(e).__name__
        else:
            code = (context.parsed_response or {}).get("Error", {}).get("Code")
            why = f"HTTP {context.http_response.status_code}" + (f" {code}" if code else "")
        left = self.max_attempts - context.attempt_number
        self.progress(f"S3 request failed ({why}); retrying, {left} of {self.max_attempts} attempts left")
        return None

    def list(self, scope: Iterable[str] | Shard | None = None, under: str = "") -> Iterator[ObjectInfo]:
        if scope is not None and not isinstance(scope, Shard):
            prefixes = [self.prefix + under + k + "/" for k in sorted(set(scope)) if k and "/" not in k]
            yield from self._parallel(prefixes)
            return
        # One delimited call finds the top-level folders; each is then listed on its own.
        top_objects: list[ObjectInfo] = []
        prefixes: list[str] = []
        for page in self._pages(self.prefix + (under if scope is not None else ""), delimiter="/"):
            top_objects.extend(_s3_object(o) for o in page.get("Contents", ()))
            prefixes.extend(p["Prefix"] for p in page.get("CommonPrefixes", ()))
        if scope is not None:  # a shard: only its top rows' folders, no keys beside them
            n = len(self.prefix + under)
            prefixes = [p for p in prefixes if p[n:-1] in scope]
            top_objects = []
        yield from top_objects
        yield from self._parallel(prefixes)

    def _parallel(self, prefixes: list[str]) -> Iterator[ObjectInfo]:
        if len(prefixes) <= 1 or self.max_workers <= 1:
            for p in prefixes:
                yield from self._list_prefix(p)
            return
        with ThreadPoolExecutor(max_workers=self.max_workers) as pool:
            # map() keeps prefix order, so the merged listing is in key order.
            for chunk in pool.map(lambda p: list(self._list_prefix(p)), prefixes):
                yield from chunk

    def _list_prefix(self, prefix: str) -> Iterator[ObjectInfo]:
        for page in self._pages(prefix):
            for o in page.get("Contents", ()):
                yield _s3_object(o)

    def _pages(self, prefix: str, delimiter: str | None = None) -> Iterator[dict]:
        from botocore.exceptions import BotoCoreError, ClientError

        kwargs = {"Bucket": self.bucket, "Prefix": prefix}
        if delimiter:
            kwargs["Delimiter"] = delimiter
        try:
            paginator = self.client().get_paginator("list_objects_v2")
            yield from paginator.paginate(**kwargs)
        except ClientError as e:
            err = e.response.get("Error", {})
            code = err.get("Code", "Unknown")
            hint = _S3_HINTS.get(code, "check the bucket name, endpoint and credentials")
            raise SourceError(f"cannot list s3://{self.bucket}/{prefix}: {code}: {hint}") from None
        except BotoCoreError as e:
            raise SourceError(f"cannot list s3://{self.bucket}/{prefix}: {_botocore_message(e)}") from None


_S3_HINTS = {
    "NoSuchBucket": "the bucket does not exist at this endpoint; check the source URL and endpoint",
    "AccessDenied": "the credentials lack s3:ListBucket on this bucket",
    "InvalidAccessKeyId": "the access key is not known to this endpoint; check AWS_ACCESS_KEY_ID",
    "SignatureDoesNotMatch": "the secret key does not match the access key; check AWS_SECRET_ACCESS_KEY",
    "SlowDown": "the endpoint kept throttling after every retry; try again later",
    "ServiceUnavailable": "the endpoint stayed unavailable after every retry; try again later",
    "InternalError": "the endpoint kept failing after every retry; try again later",
    "PermanentRedirect": "the bucket is in another region; set source.region",
    "AuthorizationHeaderMalformed": "the region is wrong for this bucket; set source.region",
}


def _botocore_message(e: Exception) -> str:
    from botocore import exceptions as x

    if isinstance(e, x.NoCredentialsError):
        return "no AWS credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE"
    if isinstance(e, (x.EndpointConnectionError, x.ConnectTimeoutError)):
        endpoint = (getattr(e, "kwargs", {}).get("endpoint_url") or "").split("?")[0]
        where = f" {endpoint}" if endpoint else ""
        return f"cannot reach the S3 endpoint{where}: check --endpoint-url, AWS_ENDPOINT_URL or source.endpoint_url"
    if isinstance(e, x.ConnectionClosedError):
        return "the S3 endpoint closed the connection without an answer, after every retry; try again later"
    if isinstance(e, x.ReadTimeoutError):
        return "the S3 endpoint did not answer in time after every retry; try again later"
    if isinstance(e, x.NoRegionError):
        return "no region: set AWS_DEFAULT_REGION or source.region"
    # botocore messages name endpoints and parameters, never credentials.
    return f"{type(e).__name__}: {e}"


def _s3_object(o: dict) -> ObjectInfo:
    lm = o.get("LastModified")
    if isinstance(lm, datetime):
        lm = lm.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    elif lm:
        lm = lm[:19] + "Z"  # "2026-11-21T10:00:00.000Z" as S3 sends it
    return ObjectInfo(o["Key"], o.get("Size"), (o.get("ETag") or "").strip('"') or None, lm)


