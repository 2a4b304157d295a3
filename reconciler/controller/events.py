"""S3 event notifications → the keys of the catalogue's top entity they name. Pure: no I/O.

Bodies come from ``POST /hooks/s3`` (AWS's record format, or MinIO's webhook body,
which wraps the same records) or from SQS (the same JSON as the message body, or
inside an SNS envelope). Events are hints: they say which top keys (models of creators,
products of product-images) to plan soon; the run lists and plans as always, so a lost
or duplicated event costs nothing but a later or an extra check.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass
from typing import Iterable
from urllib.parse import unquote_plus

from ..catalogue import Catalogue, plan_keys, read_key
from ..catalogue.keys import attributes, scope_segment
from ..errors import ReconcilerError

MAX_BODY = 1024 * 1024  # bytes; a larger webhook body is refused


class EventBodyError(ReconcilerError):
    """A notification body that is not an S3 event."""


@dataclass(frozen=True)
class S3Event:
    bucket: str
    key: str  # decoded: "+" is a space, %XX are UTF-8 bytes
    event_name: str | None = None
    sequencer: str | None = None
    event_time: str | None = None

    @property
    def dedup(self) -> str:
        """The same bucket, key and sequencer twice is one event. Without a sequencer
        the event name and time stand in; without those, nothing is deduplicated."""
        tag = self.sequencer or (
            f"{self.event_name}@{self.event_time}" if self.event_time else f"unique:{uuid.uuid4().hex}"
        )
        return hashlib.sha256("\0".join((self.bucket, self.key, tag)).encode("utf-8", "surrogatepass")).hexdigest()


def _str(record: dict, *path: str) -> str | None:
    node = record
    for name in path:
        if not isinstance(node, dict):
            return None
        node = node.get(name)
    return node if isinstance(node, str) else None


def storable(text: str | None) -> bool:
    """PostgreSQL text holds no NUL and no lone surrogate (JSON can carry both)."""
    if text is None:
        return True
    if "\0" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def parse_body(body: bytes | str) -> list[S3Event]:
    """The S3 object events of a notification body; ``[]`` for ``s3:TestEvent``.

    Raises :class:`EventBodyError` for anything that is not such a body (the whole
    body is refused; nothing of it is stored).
    """
    if isinstance(body, bytes):
        if len(body) > MAX_BODY:
            raise EventBodyError("the body is larger than 1 MiB")
        try:
            body = body.decode("utf-8")
        except UnicodeDecodeError:
            raise EventBodyError("the body is not UTF-8 text") from None
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        raise EventBodyError("the body is not JSON") from None
    if not isinstance(data, dict):
        raise EventBodyError("the body is not a JSON object")
    # SNS → SQS delivers the S3 event as a string inside an envelope.
    if data.get("Type") == "Notification" and isinstance(data.get("Message"), str):
        return parse_body(data["Message"])
    if data.get("Event") == "s3:TestEvent":
        return []
    records = data.get("Records")
    if records is None and "EventName" in data:  # a MinIO body without records
        return []
    if not isinstance(records, list):
        raise EventBodyError("the body has no 'Records' list: not an S3 event notification")
    events = []
    for i, record in enumerate(records):
        if not isinstance(record, dict):
            raise EventBodyError(f"Records[{i}] is not an object")
        bucket = _str(record, "s3", "bucket", "name")
        key = _str(record, "s3", "object", "key")
        if bucket is None or key is None:
            raise EventBodyError(f"Records[{i}] has no s3.bucket.name and s3.object.key strings")
        name = _str(record, "eventName")
        if name == "s3:TestEvent":
            continue
        key = unquote_plus(key, errors="replace")
        if not (storable(bucket) and storable(key)):
            continue  # no such object can exist; a hint about nothing
        sequencer, when = _str(record, "s3", "object", "sequencer"), _str(record, "eventTime")
        events.append(
            S3Event(
                bucket=bucket,
                key=key,
                event_name=name if storable(name) else None,
                sequencer=sequencer if storable(sequencer) else None,
                event_time=when if storable(when) else None,
            )
        )
    return events


OTHER_BUCKET = "other_bucket"
OUTSIDE_PREFIX = "outside_prefix"


@dataclass(frozen=True)
class EventScope:
    """What an event means to the catalogue: the top entity's key whose folder it
    changed (a run plans that key), or why it is ignored."""

    top_key: str | None
    ignored: str | None = None  # other_bucket, outside_prefix, or the key's reading: unmatched, a skip reason …


def scope_of(event: S3Event, catalogue: Catalogue, bucket: str | None, prefix: str) -> EventScope:
    """The top key of the event's object, as the catalogue reads its key below the
    source's ``prefix`` (``"media/"`` or ``""``): the rule that takes the key (a skip
    rule too: a scoped plan counts what it skips) and its captures give it —
    ``products/p42/500g/hero-card/a.jpg`` is about product ``p42``. Ignored: another
    bucket, a key outside the prefix, and a key whose reading names no top key (one no
    rule takes, a folder marker, ``stray.jpg`` beside the models' folders)."""
    if event.bucket != bucket:
        return EventScope(None, OTHER_BUCKET)
    if not event.key.startswith(prefix):
        return EventScope(None, OUTSIDE_PREFIX)
    rel = event.key[len(prefix):]
    reading = read_key(catalogue, rel)
    top = catalogue.top
    values = {**reading.captures, **attributes(catalogue, event.key, rel)}
    if reading.rule is None or not all(values.get(n) for n in catalogue.scope_names(top.name)):
        return EventScope(None, reading.reason)
    return EventScope(plan_keys(catalogue, top.name, values)[top.name])


def run_scope(catalogue: Catalogue, top_keys: Iterable[str]) -> list[str] | None:
    """The scope of the run for events about ``top_keys``: those keys; or the whole
    catalogue (None) when a scope cannot be listed, its top entity not being one folder
    of every key."""
    return sorted(set(top_keys)) if scope_segment(catalogue) is not None else None
