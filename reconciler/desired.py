"""The shapes of the desired rows and the rule of their URLs. Pure: no I/O.

The rows themselves are derived from a listing by :mod:`reconciler.frames`
(:func:`~reconciler.frames.build_desired_frames`, or a batch at a time in
:mod:`reconciler.engine`); :class:`DesiredState` is their plain form, dicts of rows
keyed by natural key (:meth:`reconciler.frames.DesiredFrames.to_state`).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import NamedTuple
from urllib.parse import quote

SKIPPED_EXAMPLES = 5


class ModelRow(NamedTuple):
    thumbnail_url: str | None
    icon_url: str | None
    banner_url: str | None
    post_count: int


class PostRow(NamedTuple):
    title: str
    media_cdns: dict


class MediaRow(NamedTuple):
    post: str  # natural key of the post, "M/P"
    url: str
    type: str
    size_bytes: int | None
    etag: str | None


MODEL_FIELDS = ModelRow._fields
POST_FIELDS = PostRow._fields
MEDIA_FIELDS = MediaRow._fields


@dataclass
class DesiredState:
    """What the database should hold for the models in scope.

    ``posts`` is keyed by ``"M/P"``, ``media`` by the object's full key (``s3_key``).
    """

    models: dict[str, ModelRow] = field(default_factory=dict)
    posts: dict[str, PostRow] = field(default_factory=dict)
    media: dict[str, MediaRow] = field(default_factory=dict)
    object_count: int = 0
    skipped: Counter = field(default_factory=Counter)
    skipped_examples: dict[str, list[str]] = field(default_factory=dict)

    @property
    def recognised(self) -> int:
        return self.object_count - sum(self.skipped.values())


# A media URL is the CDN base without trailing "/", then "/" and the key quoted by
# urllib.parse.quote(key, safe="/"). PLAIN_KEY matches the keys quote leaves as they
# are (letters, digits, "_.-~/"): most keys, which skip urllib's per-byte work.
PLAIN_KEY = r"[A-Za-z0-9_.~/-]*"
_plain = re.compile(PLAIN_KEY + r"\Z").match


def url_base(cdn_base_url: str) -> str:
    return cdn_base_url.rstrip("/") + "/"


def quote_key(key: str) -> str:
    """A key (or any text) as it stands in a media URL."""
    return key if _plain(key) else quote(key, safe="/")


def media_url(cdn_base_url: str, full_key: str) -> str:
    """The public URL of an object."""
    return url_base(cdn_base_url) + quote_key(full_key)


def split_post_key(key: str) -> tuple[str, str]:
    model, _, post = key.partition("/")
    return model, post
