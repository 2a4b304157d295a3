"""Layout rules: what a key below the source root means.

Pure functions, no I/O. ``classify`` turns one relative key (``M/P/file.jpg``) into a
typed item or a skip reason; :mod:`reconciler.frames` applies it to a whole listing
(once per folder and extension type) and builds the rows.

Rules (DESIGN.md, "Layout rules"):

==================================  ==============================================
key shape                           meaning
==================================  ==============================================
ends with ``/``                     folder marker, skipped
``M/file.<image>``                  an image of model ``M`` (first one: thumbnail)
``M/profile/icon.<image>``          model icon (also ``avatar.*``)
``M/profile/banner.<image>``        model banner (also ``cover.*``)
``M/P/…/file.<image|video>``        media item of post ``P`` of model ``M``
anything else                       skipped, counted by reason
==================================  ==============================================

Extensions and the icon/banner file stems are compared case-insensitively; folder
names are compared exactly (``Alice`` and ``alice`` are two models, and so are the
NFC and NFD spellings of ``Zoë``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple, Union

DEFAULT_IMAGES = ("jpg", "jpeg", "png", "gif", "webp", "avif", "heic")
DEFAULT_VIDEOS = ("mp4", "mov", "m4v", "webm", "mkv")

# Skip reasons, as they appear in a plan's ``source.skipped``.
FOLDER_MARKER = "folder_marker"
EMPTY_SEGMENT = "empty_segment"
NOT_IN_MODEL_FOLDER = "not_in_model_folder"
UNSUPPORTED_EXTENSION = "unsupported_extension"
UNRECOGNISED_PROFILE_FILE = "unrecognised_profile_file"
OUTSIDE_ROOT = "outside_root"


@dataclass(frozen=True)
class Layout:
    """The configurable part of the layout rules."""

    images: tuple[str, ...] = DEFAULT_IMAGES
    videos: tuple[str, ...] = DEFAULT_VIDEOS
    profile_folder: str = "profile"
    icon_names: tuple[str, ...] = ("icon", "avatar")
    banner_names: tuple[str, ...] = ("banner", "cover")
    _images: frozenset[str] = field(init=False, repr=False, compare=False)
    _videos: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_images", frozenset(e.lower().lstrip(".") for e in self.images))
        object.__setattr__(self, "_videos", frozenset(e.lower().lstrip(".") for e in self.videos))
        # File stems are compared case-insensitively, so the names are kept in lower case.
        object.__setattr__(self, "icon_names", tuple(n.lower() for n in self.icon_names))
        object.__setattr__(self, "banner_names", tuple(n.lower() for n in self.banner_names))

    def media_type(self, filename: str) -> str | None:
        """``"image"``, ``"video"`` or None, from the file name's extension."""
        dot = filename.rfind(".")
        if dot < 0:
            return None
        ext = filename[dot + 1 :].lower()
        if ext in self._images:
            return "image"
        if ext in self._videos:
            return "video"
        return None


class ObjectInfo(NamedTuple):
    """One object of a listing, as every source yields it (the layout's input)."""

    key: str
    size: int | None = None
    etag: str | None = None
    last_modified: str | None = None


class ModelImage(NamedTuple):
    model: str


class Icon(NamedTuple):
    model: str


class Banner(NamedTuple):
    model: str


class Media(NamedTuple):
    model: str
    post: str
    type: str  # "image" | "video"


class Skip(NamedTuple):
    reason: str


Item = Union[ModelImage, Icon, Banner, Media, Skip]


def classify(rel_key: str, layout: Layout) -> Item:
    """Classify a key relative to the source root (``M/P/file.jpg``)."""
    if rel_key.endswith("/") or not rel_key:  # "" is the root's own marker ("media/")
        return Skip(FOLDER_MARKER)
    first = rel_key.find("/")
    if first < 0:
        return Skip(NOT_IN_MODEL_FOLDER)
    model = rel_key[:first]
    if not model:
        return Skip(EMPTY_SEGMENT)
    rest = rel_key[first + 1 :]
    second = rest.find("/")
    if second < 0:  # M/file
        if layout.media_type(rest) == "image":
            return ModelImage(model)
        return Skip(UNSUPPORTED_EXTENSION)
    post = rest[:second]
    if not post:
        return Skip(EMPTY_SEGMENT)
    below = rest[second + 1 :]
    if post == layout.profile_folder:
        if "/" not in below and layout.media_type(below) == "image":
            stem = below[: below.rfind(".")].lower()
            if stem in layout.icon_names:
                return Icon(model)
            if stem in layout.banner_names:
                return Banner(model)
        return Skip(UNRECOGNISED_PROFILE_FILE)
    filename = below[below.rfind("/") + 1 :]
    kind = layout.media_type(filename)
    if kind is None:
        return Skip(UNSUPPORTED_EXTENSION)
    return Media(model, post, kind)
