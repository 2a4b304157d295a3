"""The creators catalogue (``reconciler/catalogue/shipped/creators.yaml``): the layout
rules of docs/design.md ("Layout rules") as its spec says them. What a key means
(:func:`reconciler.catalogue.read_key`), and the desired rows a listing gives
(``build_desired``, the planner's own).

Pure: no database, no network. Every row of the design's layout table has a test here.
"""

from __future__ import annotations

import unicodedata
from typing import NamedTuple
from urllib.parse import quote

import pytest

from reconciler.catalogue import load_catalogue, read_key, url_of
from reconciler.catalogue.patterns import class_of
from reconciler.engine.frames import SKIPPED_EXAMPLES
from reconciler.objects import ObjectInfo

from .conftest import CDN, CREATORS, desired_state

# The design's default extensions.
DEFAULT_IMAGES = ("jpg", "jpeg", "png", "gif", "webp", "avif", "heic")
DEFAULT_VIDEOS = ("mp4", "mov", "m4v", "webm", "mkv")


# What a key means, in the layout table's words.
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


FACETS = {"image": ModelImage, "icon": Icon, "banner": Banner}


def classify(key: str, catalogue=CREATORS):
    """The catalogue's reading of a key below the root, in the layout table's words: a
    facet of a model (its image, icon or banner), a media row of a post, or a skip."""
    reading = read_key(catalogue, key)
    if reading.reason is not None:
        return Skip(reading.reason)
    rule, captures = reading.rule, reading.captures
    if rule.action == "facet":
        assert rule.entity == "model"
        return FACETS[rule.facet](captures["model"])
    assert (rule.action, rule.entity) == ("row", "media")
    return Media(captures["model"], captures["post"], class_of(key, catalogue.classes))


def desired(*keys: str, **kwargs):
    """The desired state of a listing made of ``keys`` (no sizes or etags)."""
    return desired_state([ObjectInfo(k) for k in keys], **kwargs)


def url(key: str) -> str:
    return f"{CDN}/{key}"


def model_row(name: str, thumbnail_url=None, icon_url=None, banner_url=None, post_count=0) -> dict:
    return {"folder_name": name, "thumbnail_url": thumbnail_url, "icon_url": icon_url, "banner_url": banner_url,
            "post_count": post_count}


def post_row(key: str, images=(), videos=()) -> dict:
    model, _, folder = key.partition("/")
    return {"model": model, "folder_name": folder, "title": folder,
            "media_cdns": {"images": list(images), "videos": list(videos)}}


def media_row(key: str, post: str, type: str, size_bytes=None, etag=None) -> dict:
    return {"s3_key": key, "post": post, "url": url(key), "type": type, "size_bytes": size_bytes, "etag": etag}


# --------------------------------------------------------------------------- reading keys: the table


@pytest.mark.parametrize(
    "key, item",
    [
        # ends with "/": a folder marker
        ("Alice/", Skip("folder_marker")),
        ("Alice/Beach/", Skip("folder_marker")),
        ("Alice/profile/", Skip("folder_marker")),
        ("/", Skip("folder_marker")),
        # M/file.<image>: an image of the model
        ("Alice/a.jpg", ModelImage("Alice")),
        ("Alice/profile.jpg", ModelImage("Alice")),
        # M/profile/icon.<image> (also avatar.*), M/profile/banner.<image> (also cover.*)
        ("Alice/profile/icon.png", Icon("Alice")),
        ("Alice/profile/avatar.webp", Icon("Alice")),
        ("Alice/profile/banner.jpg", Banner("Alice")),
        ("Alice/profile/cover.gif", Banner("Alice")),
        # M/P/…/file.<image or video> with P != profile: a media item of post P
        ("Alice/Beach/1.jpg", Media("Alice", "Beach", "image")),
        ("Alice/Beach/clip.mp4", Media("Alice", "Beach", "video")),
        ("Alice/Beach/day 1/raw/x.webm", Media("Alice", "Beach", "video")),
        ("Alice/Beach/a/b/c/d/e.heic", Media("Alice", "Beach", "image")),
        ("Alice/Profile/1.jpg", Media("Alice", "Profile", "image")),  # folder names are exact
        ("Alice/Beach/icon.jpg", Media("Alice", "Beach", "image")),  # icon only counts in profile/
        # an empty model or post segment
        ("/x.jpg", Skip("empty_segment")),
        ("/Beach/x.jpg", Skip("empty_segment")),
        ("Alice//x.jpg", Skip("empty_segment")),
        # anything else
        ("x.jpg", Skip("not_in_model_folder")),
        ("README", Skip("not_in_model_folder")),
        ("Alice/notes.txt", Skip("unsupported_extension")),
        ("Alice/clip.mp4", Skip("unsupported_extension")),  # a model-level video is not a model image
        ("Alice/noext", Skip("unsupported_extension")),
        ("Alice/Beach/notes.txt", Skip("unsupported_extension")),
        ("Alice/Beach/jpg", Skip("unsupported_extension")),
        ("Alice/Beach/file.", Skip("unsupported_extension")),
        ("Alice/Beach/x.jpg.bak", Skip("unsupported_extension")),
        ("Alice/profile/other.jpg", Skip("unrecognised_profile_file")),
        ("Alice/profile/icon.mp4", Skip("unrecognised_profile_file")),
        ("Alice/profile/icon.txt", Skip("unrecognised_profile_file")),
        ("Alice/profile/old/icon.jpg", Skip("unrecognised_profile_file")),
    ],
)
def test_the_catalogue_reads_keys_as_the_layout_table_says(key, item):
    assert classify(key) == item


def test_the_default_extensions_are_the_catalogues_classes():
    assert CREATORS.classes == {"image": frozenset(DEFAULT_IMAGES), "video": frozenset(DEFAULT_VIDEOS)}


@pytest.mark.parametrize("ext", DEFAULT_IMAGES)
def test_every_default_image_extension(ext):
    assert classify(f"Alice/a.{ext}") == ModelImage("Alice")
    assert classify(f"Alice/Beach/a.{ext}") == Media("Alice", "Beach", "image")
    assert classify(f"Alice/profile/icon.{ext}") == Icon("Alice")


@pytest.mark.parametrize("ext", DEFAULT_VIDEOS)
def test_every_default_video_extension(ext):
    assert classify(f"Alice/Beach/a.{ext}") == Media("Alice", "Beach", "video")
    assert classify(f"Alice/a.{ext}") == Skip("unsupported_extension")


@pytest.mark.parametrize(
    "key, item",
    [
        ("Alice/A.JPG", ModelImage("Alice")),
        ("Alice/a.JpEg", ModelImage("Alice")),
        ("Alice/Beach/X.MP4", Media("Alice", "Beach", "video")),
        ("Alice/Beach/x.Mov", Media("Alice", "Beach", "video")),
        ("Alice/profile/ICON.PNG", Icon("Alice")),
        ("Alice/profile/Cover.Webp", Banner("Alice")),
    ],
)
def test_extensions_and_profile_names_are_case_insensitive(key, item):
    assert classify(key) == item


# --------------------------------------------------------------------------- models


def test_first_model_image_by_key_order_is_the_thumbnail_whatever_the_listing_order():
    keys = ["Alice/b.jpg", "Alice/c.png", "Alice/a.webp", "Alice/B.jpg"]
    for listing in (keys, sorted(keys), sorted(keys, reverse=True)):
        # Python string order is S3's order: "B" (0x42) sorts before "a" (0x61).
        assert desired(*listing)["model"]["Alice"]["thumbnail_url"] == url("Alice/B.jpg")


def test_a_model_with_only_profile_images():
    state = desired("Alice/profile/icon.png", "Alice/profile/banner.jpg")
    assert state["model"] == {
        "Alice": model_row(
            "Alice",
            thumbnail_url=None,
            icon_url=url("Alice/profile/icon.png"),
            banner_url=url("Alice/profile/banner.jpg"),
            post_count=0,
        )
    }
    assert state["post"] == {} and state["media"] == {}


@pytest.mark.parametrize(
    "keys, field, winner",
    [
        (["Alice/profile/icon.png", "Alice/profile/avatar.jpg"], "icon_url", "Alice/profile/avatar.jpg"),
        (["Alice/profile/icon.png", "Alice/profile/icon.jpg"], "icon_url", "Alice/profile/icon.jpg"),
        (["Alice/profile/icon.png", "Alice/profile/ICON.png"], "icon_url", "Alice/profile/ICON.png"),
        (["Alice/profile/cover.jpg", "Alice/profile/banner.png"], "banner_url", "Alice/profile/banner.png"),
        (["Alice/profile/cover.png", "Alice/profile/cover.gif"], "banner_url", "Alice/profile/cover.gif"),
    ],
)
def test_competing_profile_images_first_by_key_order_wins(keys, field, winner):
    for listing in (keys, keys[::-1]):
        assert desired(*listing)["model"]["Alice"][field] == url(winner)


def test_a_model_exists_only_if_a_key_under_it_is_recognised():
    state = desired("Bob/notes.txt", "Bob/profile/readme.md", "Bob/Trip/list.csv", "Carol/", "Carol/Trip/")
    assert state["model"] == {} and state["post"] == {} and state["media"] == {}
    assert state.object_count == 5 and state.recognised == 0


def test_profile_is_never_a_post():
    state = desired("Alice/profile/icon.jpg", "Alice/profile/extra.jpg", "Alice/profile/clip.mp4")
    assert list(state["post"]) == []
    assert state["model"]["Alice"]["post_count"] == 0
    assert state.skipped == {"unrecognised_profile_file": 2}


def test_posts_and_media_with_deeper_paths():
    state = desired(
        "Alice/Beach/1.jpg",
        "Alice/Beach/raw/2.jpg",
        "Alice/Beach/raw/deeper/3.mp4",
        "Alice/Beach/notes/readme.txt",
    )
    assert list(state["post"]) == ["Alice/Beach"]
    assert state["post"]["Alice/Beach"]["media_cdns"] == {
        "images": [url("Alice/Beach/1.jpg"), url("Alice/Beach/raw/2.jpg")],
        "videos": [url("Alice/Beach/raw/deeper/3.mp4")],
    }
    assert state["media"]["Alice/Beach/raw/deeper/3.mp4"] == media_row(
        "Alice/Beach/raw/deeper/3.mp4", post="Alice/Beach", type="video", size_bytes=None, etag=None
    )
    assert state.skipped == {"unsupported_extension": 1}


def test_a_post_exists_only_if_it_has_media():
    state = desired("Alice/a.jpg", "Alice/Empty/readme.txt", "Alice/Empty/")
    assert state["post"] == {}
    assert state["model"]["Alice"]["post_count"] == 0


def test_post_count_counts_posts_not_media():
    state = desired("Alice/Beach/1.jpg", "Alice/Beach/2.jpg", "Alice/Trip/1.mp4", "Bob/Solo/x.png")
    assert state["model"]["Alice"]["post_count"] == 2
    assert state["model"]["Bob"]["post_count"] == 1


def test_title_is_the_post_folder_name():
    state = desired("Alice/Summer at the Beach/1.jpg", "Alice/Été 2024/raw/1.jpg")
    assert state["post"]["Alice/Summer at the Beach"]["title"] == "Summer at the Beach"
    assert state["post"]["Alice/Été 2024"]["title"] == "Été 2024"


# --------------------------------------------------------------------------- thumbnails and media_cdns


def test_thumbnail_falls_back_to_the_first_post_image_of_the_model():
    state = desired("Alice/Beach/2.jpg", "Alice/Another/9.jpg", "Alice/Another/1.mp4", "Alice/profile/icon.png")
    # "Alice/Another/9.jpg" < "Alice/Beach/2.jpg": first by key, over all the model's posts.
    assert state["model"]["Alice"]["thumbnail_url"] == url("Alice/Another/9.jpg")


def test_a_model_image_beats_any_post_image_for_the_thumbnail():
    state = desired("Alice/A/1.jpg", "Alice/z.jpg")
    assert state["model"]["Alice"]["thumbnail_url"] == url("Alice/z.jpg")


def test_no_thumbnail_without_any_image():
    state = desired("Alice/Beach/1.mp4", "Alice/profile/icon.jpg", "Alice/profile/banner.jpg")
    assert state["model"]["Alice"]["thumbnail_url"] is None


def test_media_cdns_always_has_both_lists():
    state = desired("Alice/Photos/1.jpg", "Alice/Videos/1.mp4")
    assert state["post"]["Alice/Photos"]["media_cdns"] == {"images": [url("Alice/Photos/1.jpg")], "videos": []}
    assert state["post"]["Alice/Videos"]["media_cdns"] == {"images": [], "videos": [url("Alice/Videos/1.mp4")]}


def test_media_cdns_urls_are_sorted_by_key_not_by_url():
    # By key "z" (0x7a) sorts before "é" (0xe9); by URL "%C3%A9" sorts before "z".
    keys = ["Alice/Beach/é.jpg", "Alice/Beach/z.jpg", "Alice/Beach/10.jpg", "Alice/Beach/9.jpg"]
    state = desired(*keys[::-1])
    assert state["post"]["Alice/Beach"]["media_cdns"]["images"] == [
        url("Alice/Beach/10.jpg"),
        url("Alice/Beach/9.jpg"),
        url("Alice/Beach/z.jpg"),
        url("Alice/Beach/%C3%A9.jpg"),
    ]


def test_full_rows_of_a_small_bucket():
    objects = [
        ObjectInfo("Alice/a.jpg", 10, "e1"),
        ObjectInfo("Alice/profile/icon.png", 11, "e2"),
        ObjectInfo("Alice/Beach/1.jpg", 12, "e3"),
        ObjectInfo("Alice/Beach/2.mp4", 13, "e4"),
    ]
    state = desired_state(objects)
    assert state["model"] == {
        "Alice": model_row("Alice", url("Alice/a.jpg"), url("Alice/profile/icon.png"), None, 1),
    }
    assert state["post"] == {
        "Alice/Beach": post_row("Alice/Beach", [url("Alice/Beach/1.jpg")], [url("Alice/Beach/2.mp4")]),
    }
    assert state["media"] == {
        "Alice/Beach/1.jpg": media_row("Alice/Beach/1.jpg", "Alice/Beach", "image", 12, "e3"),
        "Alice/Beach/2.mp4": media_row("Alice/Beach/2.mp4", "Alice/Beach", "video", 13, "e4"),
    }
    assert state.object_count == 4 and state.recognised == 4 and not state.skipped


# --------------------------------------------------------------------------- names and URLs


def test_case_distinct_keys_are_two_models():
    state = desired("Alice/a.jpg", "alice/a.jpg", "ALICE/Beach/1.jpg")
    assert sorted(state["model"]) == ["ALICE", "Alice", "alice"]


def test_nfc_and_nfd_spellings_are_two_models_and_two_keys():
    nfc = unicodedata.normalize("NFC", "Zoë")
    nfd = unicodedata.normalize("NFD", "Zoë")
    assert nfc != nfd
    state = desired(f"{nfc}/Trip/1.jpg", f"{nfd}/Trip/1.jpg")
    assert set(state["model"]) == {nfc, nfd}
    assert set(state["post"]) == {f"{nfc}/Trip", f"{nfd}/Trip"}
    assert state["media"][f"{nfc}/Trip/1.jpg"]["url"] == url("Zo%C3%AB/Trip/1.jpg")
    assert state["media"][f"{nfd}/Trip/1.jpg"]["url"] == url("Zoe%CC%88/Trip/1.jpg")


@pytest.mark.parametrize(
    "key, expected",
    [
        ("Alice/Beach Day/a b.jpg", "Alice/Beach%20Day/a%20b.jpg"),
        ("Alice/Beach/100%.jpg", "Alice/Beach/100%25.jpg"),
        ("Alice/Beach/a+b.jpg", "Alice/Beach/a%2Bb.jpg"),
        ("Alice/Beach/why?.jpg", "Alice/Beach/why%3F.jpg"),
        ("Alice/Beach/#1.jpg", "Alice/Beach/%231.jpg"),
        ("Alice/Beach/a&b.jpg", "Alice/Beach/a%26b.jpg"),
        ("Alice/Beach/it's.jpg", "Alice/Beach/it%27s.jpg"),
        ('Alice/Beach/say "hi".jpg', "Alice/Beach/say%20%22hi%22.jpg"),
        ("Alice/Beach/a_b-c.d~e.jpg", "Alice/Beach/a_b-c.d~e.jpg"),  # unreserved characters stay
        ("Zoë/Plage/été.jpg", "Zo%C3%AB/Plage/%C3%A9t%C3%A9.jpg"),
        ("Alice/Beach/raw//x.jpg", "Alice/Beach/raw//x.jpg"),  # "/" is never quoted
    ],
)
def test_media_urls_quote_the_full_key_except_slashes(key, expected):
    state = desired(key)
    assert state["media"][key]["url"] == f"{CDN}/{expected}"
    assert state["media"][key]["url"] == CDN + "/" + quote(key, safe="/")


@pytest.mark.parametrize(
    "base",
    ["https://cdn.example.test", "https://cdn.example.test/", "https://cdn.example.test//"],
)
def test_cdn_base_url_trailing_slashes_are_dropped(base):
    state = desired("Alice/Beach/1.jpg", "Alice/a.jpg", cdn_base_url=base)
    assert state["media"]["Alice/Beach/1.jpg"]["url"] == "https://cdn.example.test/Alice/Beach/1.jpg"
    assert state["model"]["Alice"]["thumbnail_url"] == "https://cdn.example.test/Alice/a.jpg"
    assert url_of(base, "Alice/Beach/1.jpg") == "https://cdn.example.test/Alice/Beach/1.jpg"


def test_cdn_base_url_with_a_path():
    state = desired("Alice/Beach/1.jpg", cdn_base_url="https://example.test/content/")
    assert state["media"]["Alice/Beach/1.jpg"]["url"] == "https://example.test/content/Alice/Beach/1.jpg"


def test_special_characters_in_model_and_post_names():
    key = "A&B's \"Studio\"/#1 + more?/50% off.mp4"
    state = desired(key)
    assert list(state["model"]) == ["A&B's \"Studio\""]
    assert list(state["post"]) == ["A&B's \"Studio\"/#1 + more?"]
    assert state["post"]["A&B's \"Studio\"/#1 + more?"]["title"] == "#1 + more?"
    assert state["media"][key]["url"] == f"{CDN}/A%26B%27s%20%22Studio%22/%231%20%2B%20more%3F/50%25%20off.mp4"


# --------------------------------------------------------------------------- root prefix


def test_root_prefix_layout_reads_below_the_root_but_keys_and_urls_are_full():
    state = desired(
        "media/Alice/a.jpg",
        "media/Alice/Beach/1.jpg",
        "media/Alice/profile/icon.png",
        cdn_base_url=CDN,
        root="media/",
    )
    assert list(state["model"]) == ["Alice"]
    assert list(state["post"]) == ["Alice/Beach"]
    assert list(state["media"]) == ["media/Alice/Beach/1.jpg"]
    assert state["media"]["media/Alice/Beach/1.jpg"]["post"] == "Alice/Beach"
    assert state["media"]["media/Alice/Beach/1.jpg"]["url"] == url("media/Alice/Beach/1.jpg")
    assert state["model"]["Alice"] == model_row("Alice", url("media/Alice/a.jpg"), url("media/Alice/profile/icon.png"),
                                                None, 1)
    assert state["post"]["Alice/Beach"]["media_cdns"] == {"images": [url("media/Alice/Beach/1.jpg")], "videos": []}


def test_root_prefix_skips_and_counts_what_is_outside_it():
    state = desired("media/top.jpg", "media/", "other/Alice/Beach/1.jpg", "media/Alice/Beach/1.jpg", root="media/")
    assert state.object_count == 4
    assert state.skipped == {"not_in_model_folder": 1, "folder_marker": 1, "outside_root": 1}
    assert state.skipped_examples["outside_root"] == ["other/Alice/Beach/1.jpg"]
    assert state.skipped_examples["not_in_model_folder"] == ["media/top.jpg"]  # examples are full keys


# --------------------------------------------------------------------------- models= filter


def test_models_filter_ignores_other_models_without_counting_them():
    state = desired(
        "Alice/a.jpg", "Alice/Beach/1.jpg", "Alice/notes.txt", "Bob/b.jpg", "Bob/Trip/1.jpg", "top.jpg", "Alice2/a.jpg",
        models=["Alice"],
    )
    assert list(state["model"]) == ["Alice"]
    assert list(state["post"]) == ["Alice/Beach"]
    assert list(state["media"]) == ["Alice/Beach/1.jpg"]
    assert state.object_count == 3
    assert state.skipped == {"unsupported_extension": 1}


def test_models_filter_with_a_root_and_several_models():
    state = desired(
        "m/Alice/a.jpg", "m/Bob/b.jpg", "m/Carol/c.jpg", "m/alice/a.jpg", root="m/", models=("Alice", "Carol")
    )
    assert list(state["model"]) == ["Alice", "Carol"]
    assert state.object_count == 2


# --------------------------------------------------------------------------- skipped keys


def test_skipped_keys_are_counted_by_reason_with_a_few_examples():
    keys = [f"Alice/notes{i}.txt" for i in range(SKIPPED_EXAMPLES + 3)] + ["x.jpg", "Alice/", "/y.jpg", "Alice/Beach/1.jpg"]
    state = desired(*keys)
    assert state.object_count == len(keys)
    assert state.recognised == 1
    assert state.skipped == {
        "unsupported_extension": SKIPPED_EXAMPLES + 3,
        "not_in_model_folder": 1,
        "folder_marker": 1,
        "empty_segment": 1,
    }
    assert state.skipped_examples["unsupported_extension"] == [f"Alice/notes{i}.txt" for i in range(SKIPPED_EXAMPLES)]
    assert state.skipped_examples["not_in_model_folder"] == ["x.jpg"]
    assert state.skipped_examples["folder_marker"] == ["Alice/"]
    assert state.skipped_examples["empty_segment"] == ["/y.jpg"]


def test_undecodable_file_names_are_skipped_and_their_examples_are_valid_text():
    # A folder source yields undecodable bytes as lone surrogates (os.fsdecode).
    bad_media = "Alice/Beach/\udcff.jpg"
    bad_other = "Alice/\udcfe.txt"
    state = desired(bad_media, bad_other, "Alice/Beach/ok.jpg")
    assert list(state["media"]) == ["Alice/Beach/ok.jpg"]
    assert state.skipped == {"invalid_utf8_key": 1, "unsupported_extension": 1}
    for examples in state.skipped_examples.values():
        for example in examples:
            example.encode("utf-8")  # a plan must be able to hold them


def test_empty_listing():
    state = desired()
    assert (state["model"], state["post"], state["media"], state.object_count, state.recognised) == ({}, {}, {}, 0, 0)


# --------------------------------------------------------------------------- custom layout (config layout:)


def test_custom_extensions_normalise_case_and_dots():
    catalogue = load_catalogue(None, None, {"images": [".TIF", "png"], "videos": ["OGV"]})
    assert classify("Alice/a.tif", catalogue) == ModelImage("Alice")
    assert classify("Alice/a.TIF", catalogue) == ModelImage("Alice")
    assert classify("Alice/Beach/a.ogv", catalogue) == Media("Alice", "Beach", "video")
    assert classify("Alice/a.jpg", catalogue) == Skip("unsupported_extension")
    assert classify("Alice/Beach/a.mp4", catalogue) == Skip("unsupported_extension")


def test_custom_profile_folder_and_names():
    catalogue = load_catalogue(None, None, {"profile_folder": "_meta", "icon_names": ["Logo"],
                                            "banner_names": ["header"]})
    assert classify("Alice/_meta/logo.png", catalogue) == Icon("Alice")
    assert classify("Alice/_meta/LOGO.png", catalogue) == Icon("Alice")
    assert classify("Alice/_meta/header.jpg", catalogue) == Banner("Alice")
    assert classify("Alice/_meta/icon.jpg", catalogue) == Skip("unrecognised_profile_file")
    # With another profile folder, "profile" is an ordinary post.
    assert classify("Alice/profile/icon.jpg", catalogue) == Media("Alice", "profile", "image")

    state = desired("Alice/_meta/logo.png", "Alice/profile/icon.jpg", catalogue=catalogue)
    assert state["model"]["Alice"]["icon_url"] == url("Alice/_meta/logo.png")
    assert list(state["post"]) == ["Alice/profile"]
