"""From a bucket listing to the desired rows. Pure: no I/O, no database.

The listing may come in any order: every "first by key order" rule is computed as a
minimum over keys, so a parallel listing gives the same rows as a sequential one.
"""

from __future__ import annotations

import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable, NamedTuple
from urllib.parse import quote

from . import layout as L
from .shards import Shard

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


def post_key(model: str, post: str) -> str:
    return model + "/" + post


def split_post_key(key: str) -> tuple[str, str]:
    model, _, post = key.partition("/")
    return model, post


class _ModelAcc:
    __slots__ = ("image", "icon", "banner", "post_image", "posts")

    def __init__(self) -> None:
        self.image: str | None = None
        self.icon: str | None = None
        self.banner: str | None = None
        self.post_image: str | None = None
        self.posts: set[str] = set()


def _min(current: str | None, key: str) -> str:
    return key if current is None or key < current else current


def build_desired(
    objects: Iterable[L.ObjectInfo],
    *,
    cdn_base_url: str,
    root: str = "",
    layout: L.Layout | None = None,
    models: Iterable[str] | None = None,
) -> DesiredState:
    """Derive the desired rows from a listing. Reads nothing but ``objects``.

    ``root`` is the part of every key above the layout (``"media/"`` for
    ``s3://bucket/media``); the layout reads the key below it, ``s3_key`` and URLs use
    the full key. With ``models`` (names, or a :class:`~reconciler.shards.Shard`),
    objects of other models are ignored (not counted).
    """
    layout = layout or L.Layout()
    scope = None if models is None else models if isinstance(models, Shard) else frozenset(models)
    state = DesiredState()
    accs: dict[str, _ModelAcc] = {}
    post_media: dict[str, list[tuple[str, str, str]]] = {}
    root_len = len(root)
    intern = sys.intern

    def skip(reason: str, key: str) -> None:
        state.skipped[reason] += 1
        examples = state.skipped_examples.setdefault(reason, [])
        if len(examples) < SKIPPED_EXAMPLES:
            # An undecodable file name (lone surrogates) would make the plan unwritable.
            examples.append(key.encode("utf-8", "replace").decode("utf-8"))

    classify = L.Classifier(layout)
    pkeys: dict[L.Media, str] = {}  # Media items are shared per folder: their post key once
    url_of = _url_maker(cdn_base_url)
    for obj in objects:
        key = obj.key
        if not key.startswith(root):
            state.object_count += 1
            skip(L.OUTSIDE_ROOT, key)
            continue
        rel = key[root_len:] if root_len else key
        if scope is not None and rel.partition("/")[0] not in scope:
            continue
        state.object_count += 1
        item = classify(rel)
        kind = type(item)
        if kind is L.Skip:
            skip(item.reason, key)
            continue
        if not key.isascii():
            try:
                key.encode("utf-8")
            except UnicodeEncodeError:  # a folder source's undecodable file name
                skip("invalid_utf8_key", key)
                continue
        if "\x00" in key:  # PostgreSQL text cannot hold NUL
            skip("invalid_key", key.replace("\x00", "\\0"))
            continue
        model = item.model
        acc = accs.get(model)
        if acc is None:
            model = intern(model)
            acc = accs[model] = _ModelAcc()
        if kind is L.Media:
            pkey = pkeys.get(item)
            if pkey is None:
                pkey = pkeys[item] = intern(post_key(model, item.post))
            lst = post_media.get(pkey)
            if lst is None:
                lst = post_media[pkey] = []
                acc.posts.add(pkey)
            url = url_of(key)
            lst.append((key, item.type, url))
            state.media[key] = MediaRow(pkey, url, item.type, obj.size, obj.etag)
            if item.type == "image":
                acc.post_image = _min(acc.post_image, key)
        elif kind is L.ModelImage:
            acc.image = _min(acc.image, key)
        elif kind is L.Icon:
            acc.icon = _min(acc.icon, key)
        else:
            acc.banner = _min(acc.banner, key)

    for pkey, items in post_media.items():
        items.sort()
        state.posts[pkey] = PostRow(
            title=split_post_key(pkey)[1],
            media_cdns={
                "images": [u for _, t, u in items if t == "image"],
                "videos": [u for _, t, u in items if t == "video"],
            },
        )

    def url(key: str | None) -> str | None:
        return None if key is None else url_of(key)

    for model in sorted(accs):
        acc = accs[model]
        state.models[model] = ModelRow(
            thumbnail_url=url(acc.image if acc.image is not None else acc.post_image),
            icon_url=url(acc.icon),
            banner_url=url(acc.banner),
            post_count=len(acc.posts),
        )
    return state
