"""Views of a plan: the markdown for pull requests stays under GitHub's limit."""

from __future__ import annotations

import json

from reconciler.diff import Change
from reconciler.planfile import Plan
from reconciler.render import MARKDOWN_LIMIT, json_view, markdown, table

DIGEST = "0" * 64


def media(i: int, action: str = "create") -> Change:
    key = f"Model {i % 250}/Post {i % 9}/{i:06d}.jpg"
    image = {"s3_key": key, "post": key.rsplit("/", 1)[0], "url": f"https://cdn/{key}", "type": "image",
             "size_bytes": i, "etag": None}
    if action == "create":
        return Change("create", "media", key, None, image)
    return Change("delete", "media", key, image, None)


def make_plan(changes) -> Plan:
    changes = sorted(changes, key=lambda c: c.sort_key)
    return Plan(changes=changes, source={"url": "s3://media/", "object_count": len(changes), "skipped": {}},
                target={"database": "postgresql://app@db/prod", "scope": None, "state_digest": DIGEST},
                tool_version="0.1.0", created_at="2026-11-21T10:00:00Z").seal()


def test_markdown_of_100k_changes_fits_a_github_comment_and_states_every_count():
    changes = [media(i) for i in range(90_000)] + [media(i, "delete") for i in range(90_000, 100_000)]
    text = markdown(make_plan(changes))
    assert len(text) < 65_000 <= MARKDOWN_LIMIT
    assert "| media | 90000 | 0 | 0 | 10000 |" in text
    assert "[!WARNING]" in text and "deletes 10000 row(s): 10000 media" in text
    assert "<details>" in text and "more" in text
    # Each model's group states its count.
    assert "<code>Model 0</code>: 400 change(s)" in text


def test_markdown_lists_changes_grouped_by_model():
    plan = make_plan([media(1), media(2), Change("update", "model", "Model 1", {"post_count": 1}, {"post_count": 2})])
    text = markdown(plan)
    assert "No changes" not in text and "[!WARNING]" not in text
    assert text.index("<code>Model 1</code>") < text.index("<code>Model 2</code>")
    assert "post_count: 1 → 2" in text


def test_markdown_escapes_html_in_keys():
    key = "M<script>/P/1.jpg"
    plan = make_plan([Change("create", "media", key, None, {"s3_key": key, "post": "M<script>/P", "url": "u",
                                                            "type": "image", "size_bytes": 1, "etag": None})])
    assert "<script>" not in markdown(plan)


def test_empty_plan_views():
    plan = make_plan([])
    assert "No changes" in markdown(plan) and "No changes" in table(plan)
    assert json.loads(json_view(plan))["changes"] == []


def test_json_view_is_the_plan():
    plan = make_plan([media(1)])
    data = json.loads(json_view(plan))
    assert data["plan_id"] == plan.plan_id and data["summary"]["media"]["create"] == 1


# --------------------------------------------------------------------------- what a reviewer sees

C = "https://cdn.example.test"


def test_show_prints_a_move_as_from_to_with_the_fields_that_change():
    move = Change("move", "post", "Bob/Beach Day",
                  {"model": "Bob", "folder_name": "Beach Dya", "title": "Beach Dya",
                   "media_cdns": {"images": [f"{C}/Bob/Beach%20Dya/1.jpg"], "videos": []}},
                  {"model": "Bob", "folder_name": "Beach Day", "title": "Beach Day",
                   "media_cdns": {"images": [f"{C}/Bob/Beach%20Day/1.jpg"], "videos": []}},
                  from_key="Bob/Beach Dya")
    media = Change("move", "media", "Bob/Beach Day/1.jpg",
                   {"s3_key": "Bob/Beach Dya/1.jpg", "post": "Bob/Beach Dya", "url": f"{C}/Bob/Beach%20Dya/1.jpg"},
                   {"s3_key": "Bob/Beach Day/1.jpg", "post": "Bob/Beach Day", "url": f"{C}/Bob/Beach%20Day/1.jpg"},
                   from_key="Bob/Beach Dya/1.jpg")
    text = table(make_plan([move, media]))
    assert text.split("\n", 4)[4] == """\

kind      create    update    move    delete
------  --------  --------  ------  --------
model          0         0       0         0
post           0         0       1         0
media          0         0       1         0

> move post Bob/Beach Dya → Bob/Beach Day
    media_cdns.images: - https://cdn.example.test/Bob/Beach%20Dya/1.jpg
                       + https://cdn.example.test/Bob/Beach%20Day/1.jpg
    title: Beach Dya → Beach Day
> move media Bob/Beach Dya/1.jpg → Bob/Beach Day/1.jpg
    url: https://cdn.example.test/Bob/Beach%20Dya/1.jpg → https://cdn.example.test/Bob/Beach%20Day/1.jpg"""


def test_show_prints_media_cdns_as_urls_added_and_removed_in_full():
    long = f"{C}/Alice/Beach/" + "a-rather-long-file-name-" * 3 + ".jpg"  # past the old 90-character cut
    update = Change("update", "post", "Alice/Beach",
                    {"media_cdns": {"images": [f"{C}/Alice/Beach/1.jpg"], "videos": [f"{C}/Alice/Beach/2.mp4"]}},
                    {"media_cdns": {"images": [f"{C}/Alice/Beach/1.jpg", long], "videos": []}})
    text = table(make_plan([update]))
    assert text.split("\n\n")[-1] == f"""\
~ update post Alice/Beach
    media_cdns.images: + {long}
    media_cdns.videos: - https://cdn.example.test/Alice/Beach/2.mp4"""
    assert "…" not in text


def test_show_prints_the_values_a_create_writes():
    model = Change("create", "model", "Alice", None, {
        "folder_name": "Alice", "thumbnail_url": f"{C}/Alice/a.jpg", "icon_url": f"{C}/Alice/profile/icon.png",
        "banner_url": None, "post_count": 1})
    post = Change("create", "post", "Alice/Beach", None, {
        "model": "Alice", "folder_name": "Beach", "title": "Beach",
        "media_cdns": {"images": [f"{C}/Alice/Beach/1.jpg"], "videos": []}})
    text = table(make_plan([model, post, media(7)]))
    assert text.split("This plan")[0].split("\n\n")[-1] == f"""\
+ create model Alice
    thumbnail_url: {C}/Alice/a.jpg
    icon_url: {C}/Alice/profile/icon.png
    banner_url: null
    post_count: 1
+ create post Alice/Beach
    title: Beach
    media_cdns: 1 image(s), 0 video(s)
+ create media Model 7/Post 7/000007.jpg
    url: https://cdn/Model 7/Post 7/000007.jpg
    type: image, size_bytes: 7, etag: null"""


def test_no_line_of_the_table_is_longer_than_160_characters():
    key = "M/P/" + "x" * 400 + ".jpg"
    c = Change("create", "media", key, None, {"s3_key": key, "post": "M/P", "url": f"{C}/{key}", "type": "image",
                                              "size_bytes": 1, "etag": "e" * 300})
    u = Change("update", "model", "M", {"thumbnail_url": f"{C}/{'y' * 200}"}, {"thumbnail_url": f"{C}/{'z' * 200}"})
    text = table(make_plan([c, u]))
    assert max(len(line) for line in text.split("\n")) <= 160
    flat = text.replace("\n", "").replace(" ", "")
    assert "x" * 400 in flat and "e" * 300 in flat and "z" * 200 in flat  # wrapped, never cut


def test_markdown_shows_moves_and_details_without_wrapping():
    move = Change("move", "media", "B/P/1.jpg", {"s3_key": "A/P/1.jpg", "post": "A/P", "url": "u1"},
                  {"s3_key": "B/P/1.jpg", "post": "B/P", "url": "u2"}, from_key="A/P/1.jpg")
    text = markdown(make_plan([move]))
    assert "| media | 0 | 0 | 1 | 0 |" in text
    assert "- `>` move media <code>A/P/1.jpg</code> → <code>B/P/1.jpg</code>\n  - url: u1 → u2" in text
