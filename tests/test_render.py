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
