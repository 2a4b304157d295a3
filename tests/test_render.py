"""Views of a plan: the markdown for pull requests stays under GitHub's limit, and
reads, rendered as GitHub renders it, with every name as it is."""

from __future__ import annotations

import json
from html.parser import HTMLParser

import cmarkgfm
from cmarkgfm.cmark import Options
from hypothesis import given, settings, strategies as st

from reconciler.engine.diff import Change, change_order
from reconciler.planfile import Plan
from reconciler.render import MARKDOWN_LIMIT, change_head, change_lines, json_view, markdown, scope_text, table

from .conftest import CREATORS

DIGEST = "0" * 64


class Rendered(HTMLParser):
    """A pull-request comment as GitHub renders it: its elements and its text."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.text = ""
        self.links: list[tuple[str, int]] = []  # (href, where its text starts)
        self.shown: list[tuple[str, str]] = []  # (href, text) of each link
        # Raw HTML passes (GitHub sanitises it later): markup a name slipped in would show here.
        self.feed(cmarkgfm.github_flavored_markdown_to_html(text, options=Options.CMARK_OPT_UNSAFE))
        self.close()

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "a":
            self.links.append((dict(attrs).get("href") or "", len(self.text)))

    def handle_endtag(self, tag):
        if tag == "a":
            href, start = self.links.pop()
            self.shown.append((href, self.text[start:]))

    def handle_data(self, data):
        self.text += data

    def markup(self) -> set[str]:
        """The elements. GitHub links an e-mail address in the text whatever is done to
        it (it finds them in the text as read); such a link, which shows where it goes,
        is left out."""
        tags = set(self.tags)
        if all(href == "mailto:" + text for href, text in self.shown):
            tags.discard("a")
        return tags

    def rows(self) -> list[int]:
        """The number of cells of each table row."""
        counts, cells = [], None
        for tag in self.tags:
            if tag == "tr":
                if cells is not None:
                    counts.append(cells)
                cells = 0
            elif tag in ("td", "th"):
                cells += 1
        return counts + ([cells] if cells is not None else [])


# The elements a plan's comment is made of: nothing a name could add (nor a link of a URL
# written out: GitHub would make one of a media URL, or of a URL in a title).
OUR_TAGS = {"h3", "ul", "li", "p", "code", "table", "thead", "tbody", "tr", "th", "td", "details", "summary",
            "blockquote", "strong"}


def media(i: int, action: str = "create") -> Change:
    key = f"Model {i % 250}/Post {i % 9}/{i:06d}.jpg"
    image = {"s3_key": key, "post": key.rsplit("/", 1)[0], "url": f"https://cdn/{key}", "type": "image",
             "size_bytes": i, "etag": None}
    if action == "create":
        return Change("create", "media", key, None, image)
    return Change("delete", "media", key, image, None)


def make_plan(changes) -> Plan:
    changes = sorted(changes, key=change_order(CREATORS.kinds))
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
    assert "post_count: 1 → 2" in Rendered(text).text


HOSTILE = [
    "<img src=x onerror=alert(1)>|*x*",
    "*bold* _it_ [link](https://evil.example) ![i](https://evil.example/i.png) `code` ~~gone~~ $x^2$",
    "a | b \\| c &amp; &lt;b&gt; <!-- x --> \\* <details>",
    "line\n# Heading\n- item\n\n> quote",
    "see www.evil.example, WWW.evil.example, ftp://evil.example and me@evil.example @team #1 :smile:",
]


def hostile_plan(name: str) -> Plan:
    """A plan whose model, post, title, key and scope are ``name``: a creator folder named
    by whoever uploads to the bucket."""
    key = f"{name}/{name}/1.jpg"
    post = Change("update", "post", f"{name}/{name}", {"title": "Beach"}, {"title": name})
    media = Change("create", "media", key, None, {"s3_key": key, "post": f"{name}/{name}", "url": f"{C}/{key}",
                                                   "type": "image", "size_bytes": 1, "etag": name})
    plan = make_plan([post, media])
    plan.target["scope"] = [name, "Bob"]
    plan.source["skipped"] = {name: 1}
    return plan.seal()


def test_markdown_shows_hostile_names_as_text():
    for name in HOSTILE:
        text = markdown(hostile_plan(name))
        page = Rendered(text)
        assert page.markup() <= OUR_TAGS, (name, page.markup() - OUR_TAGS)
        assert page.tags.count("h3") == 1 and page.tags.count("details") == 1
        assert page.rows() == [5, 5, 5, 5]  # the summary table: a header and three kinds, five columns
        assert f"models {name}, Bob" in page.text  # the target line
        assert f"title: Beach → {name}" in page.text
        assert f"{name}/{name}/1.jpg" in page.text


@settings(max_examples=200)
# Control characters and noncharacters are written as references too; how a browser
# shows those is its own business (Python's parser drops them), so they are left out here.
@given(st.text(st.characters(blacklist_categories=("Cs", "Cc", "Cn")) | st.sampled_from("\t\n\r"), min_size=1)
       | st.lists(st.sampled_from(["www", "WWW", ".", ":", "//", "@", "_", "*", "x", " ", "http", "a.b", "\\", "`",
                                   "[", "](", ")", "<", ">", "&", "#", "|", "~", "$"]), min_size=1).map("".join))
def test_markdown_shows_any_name_as_text(name):
    """Whatever the name, the comment has only its own elements and shows what ``show``
    shows, character for character."""
    plan = hostile_plan(name)
    page = Rendered(markdown(plan))
    assert page.markup() <= OUR_TAGS
    assert page.rows() == [5, 5, 5, 5]
    assert f"target: {plan.target['database']}, {scope_text(plan)}" in page.text
    for c in plan.changes:
        assert change_head(c).partition(" ")[2] in page.text
        assert all(line.strip() in page.text for line in change_lines(c, width=None))


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
    page = Rendered(text)
    assert "> move media A/P/1.jpg → B/P/1.jpg\n\nurl: u1 → u2\n" in page.text
    assert page.tags.count("ul") == 3  # the header's, the changes', and the move's details under it
