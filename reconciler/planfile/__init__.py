"""The plan file: serialise, hash, sign, read and validate. No database.

``plan_id`` is the SHA-256 of the canonical body (the plan without ``plan_id`` and
``signature``, as ``json.dumps(body, sort_keys=True, separators=(",", ":"),
ensure_ascii=False).encode()``), so anyone can recompute it.

The file is that object with sorted keys, the envelope pretty-printed and **one change
per line** (each in its canonical form)::

    {
      "changes": [
        {"action":"create","after":{...},"before":null,"key":"Alice","kind":"model"},
        ...
      ],
      "created_at": "2026-11-21T10:00:00Z",
      ...
    }

so that ``git diff`` of two plans shows exactly the changes that differ, and a plan with
a million changes is written, hashed and verified as a stream of lines: it is never
held in memory as a million dicts. Any other JSON layout of the same object (say,
reformatted by ``jq``) is read too, and has the same ``plan_id``.
"""

from .digest import SIGNING_KEY_ENV
from .plan import FORMAT_VERSION, MAX_PLAN_BYTES, Plan, utc_now
from .reader import ChangeSink, plan_schema
from .rules import check_change, check_identity, check_values, plan_rules
from .verify import check_catalogue, load_plan, verify_plan
from .writer import write_plan

__all__ = [
    "SIGNING_KEY_ENV", "FORMAT_VERSION", "MAX_PLAN_BYTES", "Plan", "utc_now", "ChangeSink", "plan_schema",
    "check_change", "check_identity", "check_values", "plan_rules", "check_catalogue", "load_plan", "verify_plan",
    "write_plan",
]
