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


# Keys made only of these characters need no quoting: skip urllib's per-byte work.
_PLAIN = re.compile(r"[A-Za-z0-9_.~/-]*\Z").match


def _url_maker(cdn_base_url: str):
    """``url(full_key)``: the base without trailing ``/``, then ``/`` and the quoted key."""
    base = cdn_base_url.rstrip("/") + "/"

    def url(full_key: str) -> str:
        return base + (full_key if _PLAIN(full_key) else quote(full_key, safe="/"))

    return url


def media_url(cdn_base_url: str, full_key: str) -> str:
    """The public URL of an object (the same function the planner uses)."""
    return _url_maker(cdn_base_url)(full_key)


def split_post_key(key: str) -> tuple[str, str]:
    model, _, post = key.partition("/")
    return model, post
