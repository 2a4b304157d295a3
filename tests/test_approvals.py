"""Approval policies and change windows deciding applies (reconciler/controller/approvals.py):
the pure verdict, then runs planned and approved in process on a real PostgreSQL, with
an injected clock (docs/design.md, "Approvals, change windows and notifications")."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, strategies as st

from reconciler import Settings
from reconciler.controller.approvals import Approvals, Policy, Rule, evaluate, parse_policy
from reconciler.controller.runs import BadRequest, RunConflict, Runs
from reconciler.controller.windows import Window
from reconciler.errors import ConfigError

from .conftest import CDN, Clock, folder_bucket
from .test_dashboard import KEYS, seed_gone

BERLIN = ZoneInfo("Europe/Berlin")
FREEZE = Window("deny", "0 18 * * FRI", 64 * 3600, "Europe/Berlin", "weekend freeze")
FRIDAY_NIGHT = datetime(2026, 3, 6, 19, 0, tzinfo=BERLIN)
MONDAY_MORNING = datetime(2026, 3, 9, 10, 0, tzinfo=BERLIN)
CREATES = {"model": {"create": 2, "delete": 0}, "media": {"create": 3, "delete": 0}}
DELETES_A_MODEL = {"model": {"create": 0, "delete": 1}, "post": {"create": 0, "delete": 1}}
STRICT = Policy(1, (Rule("deletes_top", 2), Rule("deletes_over", 2, over=100)), self_approval=False)


# --------------------------------------------------------------------------- the verdict


def test_one_approval_is_the_default():
    v = evaluate(Policy(), CREATES, "model", [])
    assert not v.met and v.text == "needs 1, has 0" and v.missing == "1 more approval"
    assert evaluate(Policy(), CREATES, "model", ["alice"]).met


def test_a_rule_raises_the_number_by_what_the_plan_does():
    v = evaluate(STRICT, DELETES_A_MODEL, "model", ["alice"], top_label="model")
    assert not v.met and v.text == "needs 2, has 1 (alice)" and v.because == ("it deletes a model",)
    assert evaluate(STRICT, DELETES_A_MODEL, "model", ["alice", "bob"]).met
    assert evaluate(STRICT, {"media": {"delete": 101}}, "model", ["alice"]).required == 2
    assert evaluate(STRICT, {"media": {"delete": 100}}, "model", ["alice"]).met


def test_the_person_who_asked_may_not_be_the_only_approver():
    v = evaluate(STRICT, CREATES, "model", ["alice"], "alice")
    assert not v.met and v.missing == "an approval by someone other than alice, who asked for this run"
    assert evaluate(STRICT, CREATES, "model", ["bob"], "alice").met
    assert evaluate(Policy(), CREATES, "model", ["alice"], "alice").met  # self_approval defaults to true


def test_auto_apply_stands_in_for_the_base_number_never_for_a_stricter_rule():
    assert evaluate(STRICT, CREATES, "model", [], auto="auto-apply (creates)").met
    v = evaluate(STRICT, DELETES_A_MODEL, "model", [], auto="auto-apply (within-limits)")
    assert not v.met and v.auto is None and v.text == "needs 2, has 0"


@given(required=st.integers(1, 4), approvers=st.lists(st.sampled_from(["alice", "bob", "carol", "dan"]), max_size=6))
def test_met_exactly_with_as_many_distinct_approvers_as_required(required, approvers):
    v = evaluate(Policy(required), CREATES, "model", approvers)
    assert v.met is (len(set(approvers)) >= required)
    assert v.approvers == tuple(dict.fromkeys(approvers))


def test_policies_read_from_the_config_shape():
    assert parse_policy({"required": 1, "self_approval": False, "rules": [
        {"when": "deletes_top", "required": 2}, {"when": {"deletes_over": 100}, "required": 2}]}) == STRICT
    assert parse_policy(None) == Policy()
    for rules, message in (
        ([{"when": "deletes_everything", "required": 2}], "serve.approvals.rules[0].when: unknown condition "
         "'deletes_everything'; conditions are deletes, deletes_top, deletes_over, changes_over"),
        ([{"when": "deletes_over", "required": 2}], "serve.approvals.rules[0].when: deletes_over needs a number, "
         "like {deletes_over: 100}"),
        ([{"when": {"deletes_top": 3}, "required": 2}], "serve.approvals.rules[0].when: 'deletes_top' takes no "
         "number; deletes_over and changes_over do"),
    ):
        with pytest.raises(ConfigError) as e:
            parse_policy({"rules": rules})
        assert str(e.value) == message


# --------------------------------------------------------------------------- runs, approved


@pytest.fixture
def bucket_dir(tmp_path):
    return folder_bucket(tmp_path / "bucket", *KEYS)


@pytest.fixture
def decide(database_url, bucket_dir):
    """``decide(policy=…, windows=…, auto_apply=…)`` → (Approvals, Runs, Clock) over
    ``bucket_dir`` and the test database."""
    made = []

    def make(policy=Policy(), windows=(), auto_apply="off", now=FRIDAY_NIGHT):
        settings = Settings(database=database_url, source=str(bucket_dir), cdn_base_url=CDN)
        runs = Runs(settings)
        made.append(runs)
        clock = Clock(now)
        return Approvals(runs, policy, tuple(windows), auto_apply, settings.catalogue, settings.limits, clock), runs, clock

    yield make
    for runs in made:
        runs.close()


def test_a_plan_deleting_a_model_is_applied_at_the_second_approval_never_before(decide, sql):
    seed_gone(sql)
    approvals, runs, _ = decide(STRICT)
    run = runs.plan_now("schedule")
    first = approvals.approve(run["id"], "alice")
    assert not first["applied"] and first["status"] == "planned"
    assert first["approval"]["text"] == "needs 2, has 1 (alice)" and first["approval"]["because"] == ["it deletes a model"]
    again = approvals.approve(run["id"], "alice")  # the same person twice is one approval
    assert not again["applied"] and again["approval"]["text"] == "needs 2, has 1 (alice)"
    assert approvals.apply_ready() == [] and sql("SELECT count(*) FROM reconciler_applies")[0][0] == 0
    done = approvals.approve(run["id"], "bob")
    assert done["applied"] and done["status"] == "applied" and done["decided_by"] == "alice, bob"
    assert sql("SELECT os_user FROM reconciler_applies")[0][0].startswith("alice, bob")
    assert sql("SELECT person FROM reconciler_approvals WHERE run_id = %s ORDER BY approved_at", (run["id"],)) == [
        ("alice",), ("bob",)]
    with pytest.raises(RunConflict, match="applied, not planned"):
        approvals.approve(run["id"], "carol")


def test_who_asked_for_a_run_needs_another_approver(decide):
    approvals, runs, _ = decide(STRICT)
    run = runs.execute(runs.create_run("manual", None, by="alice"))
    assert run["triggered_by"] == "alice"
    alone = approvals.approve(run["id"], "alice")
    assert not alone["applied"] and "someone other than alice" in alone["approval"]["missing"]
    assert approvals.approve(run["id"], "bob")["applied"]


def test_the_next_check_with_the_same_changes_keeps_the_approvals(decide):
    approvals, runs, _ = decide(Policy(required=2))
    first = runs.plan_now("schedule")
    approvals.approve(first["id"], "alice")
    second = runs.plan_now("schedule")
    assert runs.get_run(first["id"])["status"] == "superseded" and second["fingerprint"] == first["fingerprint"]
    assert approvals.carry_over(second) == 1
    assert approvals.approve(second["id"], "bob")["applied"]


def test_an_apply_waits_in_a_deny_window_goes_with_an_override_and_after_it(decide, sql, bucket_dir):
    approvals, runs, clock = decide(windows=[FREEZE])
    run = runs.plan_now("schedule")
    waiting = approvals.approve(run["id"], "alice")
    assert not waiting["applied"] and waiting["approval"]["met"]
    assert waiting["window"]["open"] is False
    assert waiting["window"]["reason"] == "inside the deny window 'weekend freeze' until Mon 2026-03-09 10:00 CET"
    assert approvals.apply_ready() == [] and sql("SELECT count(*) FROM whitelabel_models")[0][0] == 0
    with pytest.raises(BadRequest, match="needs a reason"):
        approvals.approve(run["id"], "alice", override=" ")

    forced = approvals.approve(run["id"], "alice", override="hotfix for INC-42")
    assert forced["applied"] and forced["override_reason"] == "hotfix for INC-42"
    assert sql("SELECT override_reason FROM reconciler_applies WHERE id = %s", (forced["apply_id"],)) == [
        ("hotfix for INC-42",)]

    folder_bucket(bucket_dir, "Carol/new.jpg")
    later = runs.plan_now("schedule")
    assert not approvals.approve(later["id"], "bob")["applied"]
    clock.now = MONDAY_MORNING
    assert approvals.apply_ready() == [later["id"]]
    applied = runs.get_run(later["id"])
    assert applied["status"] == "applied" and applied["decided_by"] == "bob" and applied["override_reason"] is None


def test_auto_apply_goes_through_the_same_verdict(decide, bucket_dir):
    approvals, runs, _ = decide(Policy(1, (Rule("changes_over", 2, over=5),)), auto_apply="creates",
                                now=MONDAY_MORNING)
    big = runs.plan_now("schedule")  # 7 creates: over 5, so two people
    assert approvals.apply_ready() == []
    assert approvals.verdict(big).text == "needs 2, has 0"
    approvals.approve(big["id"], "alice")
    assert approvals.approve(big["id"], "bob")["applied"]

    relaxed, runs, _ = decide(auto_apply="creates", now=MONDAY_MORNING)
    folder_bucket(bucket_dir, "Carol/new.jpg")
    small = runs.plan_now("schedule")
    assert relaxed.verdict(small).text == "auto-apply (creates) applies it without a person"
    assert relaxed.apply_ready() == [small["id"]]
    assert runs.get_run(small["id"])["decided_by"] == "auto-apply (creates)"
