"""A deterministic synthetic bucket for the benchmarks.

Shape (the creators catalogue, docs/design.md "Layout rules"):

* 200 models (a few with spaces and non-ASCII letters, so URL quoting is exercised);
* per model ``profile/icon.jpg`` (or ``avatar.png``), ``profile/banner.jpg`` (or
  ``cover.webp``) and two model images (``thumb-1.jpg``, ``thumb-2.jpg``);
* the rest are post media, split evenly over the models, in posts of 40–60 objects
  (about 50): ~85 % images (jpg/png/webp/heic), ~15 % videos (mp4/mov/webm);
* one stray ``Thumbs.db`` in every 97th post (a skipped key, as real buckets have).

Everything comes from ``random.Random(seed)`` and the object's position, so the same
``(n, seed)`` always gives the same listing, in S3 key order.

``delta=True`` gives the same bucket one "day" later (about 1 % of the objects differ):

* 0.5 % of the media are deleted, 0.5 % new media appear next to existing ones, and
  0.1 % of the media get a new size and ETag (re-uploaded);
* the first post of two models disappears entirely (post deletes);
* four models get a new post of 50 media (post creates).

CLI: ``python bench/synth.py --objects N [--delta] --write-folder DIR`` materialises
the listing as a folder tree (sparse files of the listed size) for ``--source DIR``;
``--count`` only prints how many objects, media, posts and skipped keys it holds.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
from typing import Iterator

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from reconciler.objects import ObjectInfo  # noqa: E402

N_MODELS = 200
POST_MIN, POST_MAX = 40, 60
IMAGE_EXTS = ("jpg", "jpg", "jpg", "jpeg", "png", "webp", "heic")
VIDEO_EXTS = ("mp4", "mp4", "mov", "webm")
VIDEO_SHARE = 0.15
WORDS = ("beach", "gym", "studio", "travel", "bts", "night out", "cosplay", "garden", "city", "pool")
LAST_MODIFIED = "2026-11-01T12:00:00Z"

# Delta rules, on a multiplicative hash of the media's ordinal (per mille ×10).
_DELETE_BELOW = 50  # 0.5 %
_RESIZE_BELOW = 60  # 0.1 %
_ADD_BELOW = 110  # 0.5 %


def _h(i: int) -> int:
    return (i * 2654435761) % 10000


def model_names(seed: int = 1) -> list[str]:
    rng = random.Random(seed)
    names = []
    for i in range(N_MODELS):
        if i % 40 == 7:
            names.append(f"Zoë Ånström {i:03d}")
        elif i % 25 == 3:
            names.append(f"Mia Rose {i:03d}")
        else:
            names.append(f"creator_{i:03d}_{rng.choice(('a', 'b', 'c', 'x'))}")
    return sorted(names)


def plan_layout(n: int, seed: int = 1) -> list[tuple[str, list[int]]]:
    """Per model (sorted): its name and the sizes of its posts (media per post)."""
    names = model_names(seed)
    model_level = 4 * N_MODELS
    n_media = max(0, n - model_level)
    rng = random.Random(seed * 7919 + 1)
    out = []
    for i, name in enumerate(names):
        budget = n_media // N_MODELS + (1 if i < n_media % N_MODELS else 0)
        posts = []
        while budget > 0:
            size = min(budget, rng.randint(POST_MIN, POST_MAX))
            if 0 < budget - size < POST_MIN // 2:  # no tiny tail post
                size = budget
            posts.append(size)
            budget -= size
        out.append((name, posts))
    return out


def synthetic_bucket(n: int, seed: int = 1, delta: bool = False, root: str = "") -> Iterator[ObjectInfo]:
    """The listing of a synthetic bucket of about ``n`` objects, in key order.

    The base bucket holds ``n`` recognised objects (for ``n >= 800``) plus one stray
    ``Thumbs.db`` per 97 posts (~0.02 %); ``delta=True`` gives the changed bucket (see
    the module docstring).
    """
    rng = random.Random(seed)
    # New posts of the delta draw from their own stream, so that every object the two
    # listings share gets the same size, etag and extension in both.
    new_rng = random.Random(seed * 104729 + 3)
    n_images = len(IMAGE_EXTS)
    video_cut = int(VIDEO_SHARE * 65536)
    media_ordinal = 0
    post_ordinal = 0
    layout = plan_layout(n, seed)
    stems = [f"{k:05d}" for k in range(2 * POST_MAX + 2)]  # a post holds < 2 * POST_MAX
    for mi, (model, posts) in enumerate(layout):
        m = root + model + "/"
        post_specs = [(f"{j + 1:05d}-{WORDS[(j + mi) % len(WORDS)]}", size) for j, size in enumerate(posts)]
        if delta and mi % 50 == 3:
            post_specs.append(("99999-new drop", 50))
        for pj, (post, size) in enumerate(post_specs):
            is_new_post = post.startswith("99999")
            post_ordinal += not is_new_post
            drop_post = delta and pj == 0 and mi % 100 == 7
            p = m + post + "/"
            randbits = (new_rng if is_new_post else rng).getrandbits
            # One draw per object (kept cheap: the generator runs inside the timed plan).
            for k in range(1, size + 1):
                r = randbits(192)
                if (r & 0xFFFF) < video_cut:
                    ext = VIDEO_EXTS[(r >> 16) & 3]
                    size_bytes = 1_000_000 + ((r >> 32) & 0xFFFFFFF)
                else:
                    ext = IMAGE_EXTS[((r >> 16) & 0xFFFF) % n_images]
                    size_bytes = 40_000 + ((r >> 32) & 0x3FFFFF)
                etag = "%032x" % (r >> 64)
                stem = p + stems[k]
                if not delta or is_new_post:
                    yield ObjectInfo(stem + "." + ext, size_bytes, etag, LAST_MODIFIED)
                    continue
                media_ordinal += 1
                if drop_post:
                    continue
                h = _h(media_ordinal)
                if h < _DELETE_BELOW:
                    continue
                if h < _RESIZE_BELOW:
                    size_bytes += 1
                    etag = etag[::-1]
                yield ObjectInfo(stem + "." + ext, size_bytes, etag, LAST_MODIFIED)
                if _RESIZE_BELOW <= h < _ADD_BELOW:
                    yield ObjectInfo(stem + "_edit.jpg", size_bytes // 2, etag[:31] + "e", LAST_MODIFIED)
            if post_ordinal % 97 == 0 and not drop_post and not is_new_post:
                yield ObjectInfo(f"{p}Thumbs.db", 20_480, "%032x" % post_ordinal, LAST_MODIFIED)
        # "profile/" sorts after the digit-led post folders, "thumb-" after "profile/".
        alt = mi % 3 == 0
        yield from sorted(
            (
                ObjectInfo(f"{m}profile/{'avatar.png' if alt else 'icon.jpg'}", 120_000 + mi, "%032x" % (mi + 1), LAST_MODIFIED),
                ObjectInfo(f"{m}profile/{'cover.webp' if alt else 'banner.jpg'}", 900_000 + mi, "%032x" % (mi + 2), LAST_MODIFIED),
                ObjectInfo(f"{m}thumb-1.jpg", 300_000 + mi, "%032x" % (mi + 3), LAST_MODIFIED),
                ObjectInfo(f"{m}thumb-2.jpg", 310_000 + mi, "%032x" % (mi + 4), LAST_MODIFIED),
            )
        )

# The product-images catalogue's bucket: products/{id}/{weight}/{image type}/{file}.
PRODUCT_WEIGHTS = ("250g", "500g")
PRODUCT_TYPES = (("hero-card", 1), ("info-card", 4), ("other-images", 20))  # images of each type per variant
PER_PRODUCT = len(PRODUCT_WEIGHTS) * sum(n for _, n in PRODUCT_TYPES)  # 50


def product_ids(n: int) -> list[str]:
    """The synthetic shop's products: one per 50 objects, as the platform holds them."""
    return [f"p{i:07d}" for i in range(max(1, n // PER_PRODUCT))]


def synthetic_products(n: int, seed: int = 1, delta: bool = False, root: str = "") -> Iterator[ObjectInfo]:
    """A product-image bucket of about ``n`` objects, in key order: every product has two
    variants of 25 images (a hero card, 4 info cards, 20 others). ``delta=True``: 0.5 %
    deleted, 0.5 % added, 0.1 % re-uploaded, as :func:`synthetic_bucket`'s delta."""
    rng = random.Random(seed)
    ordinal = 0
    for product in product_ids(n):
        for weight in PRODUCT_WEIGHTS:
            for kind, count in PRODUCT_TYPES:
                folder = f"{root}products/{product}/{weight}/{kind}/"
                for k in range(count):
                    r = rng.getrandbits(128)
                    size, etag = 40_000 + ((r >> 96) & 0x3FFFFF), "%032x" % r
                    ordinal += 1
                    h = _h(ordinal)
                    if delta and h < _DELETE_BELOW:
                        continue
                    if delta and h < _RESIZE_BELOW:
                        size, etag = size + 1, etag[::-1]
                    yield ObjectInfo(f"{folder}{k:03d}.jpg", size, etag, LAST_MODIFIED)
                    if delta and _RESIZE_BELOW <= h < _ADD_BELOW:
                        yield ObjectInfo(f"{folder}{k:03d}_edit.jpg", size // 2, etag[:31] + "e", LAST_MODIFIED)


def write_folder(objects, folder: str) -> int:
    """Materialise a listing as a folder tree of sparse files; returns the count."""
    n = 0
    made: set[str] = set()
    for o in objects:
        path = os.path.join(folder, *o.key.split("/"))
        parent = os.path.dirname(path)
        if parent not in made:
            os.makedirs(parent, exist_ok=True)
            made.add(parent)
        with open(path, "wb") as f:
            f.truncate(o.size or 0)
        n += 1
    return n


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--objects", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--delta", action="store_true")
    ap.add_argument("--write-folder", metavar="DIR")
    ap.add_argument("--count", action="store_true")
    args = ap.parse_args(argv)
    objects = synthetic_bucket(args.objects, args.seed, args.delta)
    if args.write_folder:
        print(write_folder(objects, args.write_folder), "objects written to", args.write_folder)
        return 0
    if args.count:
        from reconciler.engine.frames import build_desired_frames

        d = build_desired_frames(objects, cdn_base_url="https://cdn.example.test")
        print(
            f"objects={d.object_count} models={len(d.models)} posts={d.post_frame.height} media={d.media.height} "
            f"skipped={dict(d.skipped)}"
        )
        return 0
    try:
        for o in objects:
            print(o.key)
    except BrokenPipeError:  # | head
        sys.stdout = None
    return 0


if __name__ == "__main__":
    sys.exit(main())
