"""A plan's identity: ``plan_id`` (SHA-256 of the canonical body, computed while the
changes stream) and the optional HMAC signature over it."""

from __future__ import annotations

import hashlib
import hmac
from typing import Iterator

from ..canonical import canonical
from ..engine.diff import Change, ChangeList, Lines
from ..errors import PlanFileError

SIGNING_KEY_ENV = "RECONCILER_SIGNING_KEY"


# --------------------------------------------------------------------------- hashing


class BodyHasher:
    """SHA-256 (and HMAC) of the canonical body, fed the canonical changes in batches."""

    def __init__(self, signing_key: str | None = None) -> None:
        self.sha = hashlib.sha256(b'{"changes":[')
        self.mac = hmac.new(signing_key.encode("utf-8"), b'{"changes":[', hashlib.sha256) if signing_key else None
        self._first = True

    def joined(self, text: str, count: int) -> None:
        """``count`` canonical changes, joined by commas."""
        if count:
            self._update(("" if self._first else ",") + text)
            self._first = False

    def joined_bytes(self, data: bytes, count: int) -> None:
        """:meth:`joined` of UTF-8 text that is bytes already (read from a file)."""
        if count:
            data = data if self._first else b"," + data
            self._first = False
            self.sha.update(data)
            if self.mac:
                self.mac.update(data)

    def _update(self, text: str) -> None:
        try:
            data = text.encode("utf-8")
        except UnicodeEncodeError:
            raise PlanFileError("the plan holds text that is not valid Unicode (a lone surrogate)") from None
        self.sha.update(data)
        if self.mac:
            self.mac.update(data)

    def finish(self, envelope: dict) -> tuple[str, str | None]:
        rest = canonical(envelope)
        self._update("]" + ("," + rest[1:] if rest != "{}" else "}"))
        return self.sha.hexdigest(), self.mac.hexdigest() if self.mac else None


BATCH = 4096
LINES_BATCH = 16_384  # creates already canonical: joined a frame slice at a time (~6 MB)


def encoded_batches(changes: list[Change]) -> Iterator[tuple[str, int]]:
    """The canonical changes, one C encoder call per batch, joined by commas.

    Between two changes the text reads '},{"action":', which no change holds inside
    (a '"' in a string is escaped): the file splits a batch into lines there.
    """
    if isinstance(changes, ChangeList):  # creates already canonical, in columns
        for segment in changes.segments:
            if isinstance(segment, Lines):
                yield from segment.batches(LINES_BATCH)
            else:
                yield from encoded_batches(segment)
        return
    for i in range(0, len(changes), BATCH):
        batch = [c.to_dict() for c in changes[i : i + BATCH]]
        yield canonical(batch)[1:-1], len(batch)


def hash_body(changes: list[Change], envelope: dict, signing_key: str | None) -> tuple[str, str | None]:
    """(plan_id, signature or None) of a plan's changes and envelope."""
    h = BodyHasher(signing_key)
    for text, count in encoded_batches(changes):
        h.joined(text, count)
    return h.finish(envelope)


def signature_problem(signature: str | None, mac: str | None, signing_key: str | None, required: bool) -> str | None:
    if signature is None:
        if required:
            return "the plan is not signed and a signature is required; make it with `reconciler plan --sign`"
        return None
    if not signing_key:
        return f"cannot check the plan's signature: {SIGNING_KEY_ENV} is not set" if required else None
    if mac is None or not hmac.compare_digest(signature, f"hmac-sha256:{mac}"):
        return f"the plan's signature does not match: it was signed with another key, or edited; check {SIGNING_KEY_ENV}"
    return None
