"""reconciler: keep a PostgreSQL content catalogue in line with an S3 bucket,
through reviewable plans (``plan`` → review → ``apply``), with an audit log and
rollback.

Library use::

    from reconciler import Settings, make_plan, write_plan, load_plan
    settings = Settings(source="s3://media/", cdn_base_url="https://cdn.example.com",
                        database="postgresql://app@db/prod")
    plan = make_plan(settings)           # reads only
    write_plan(plan, "plans/today.json")

Without a database or a bucket, from rows in memory::

    from reconciler import ObjectInfo, build_desired_frames, plan_from_rows
    from reconciler.current import CurrentState
    objects = [ObjectInfo("Alice/Beach/1.jpg", 10, "e1")]
    desired = build_desired_frames(objects, cdn_base_url="https://cdn.example.com").to_state()
    result = plan_from_rows(objects, CurrentState(), cdn_base_url="https://cdn.example.com")
    result.changes                       # creates of Alice, Alice/Beach and its image
"""

from .version import __version__
from .config import Settings, load_settings
from .errors import ReconcilerError
from .layout import Layout, ObjectInfo
from .frames import build_desired_frames
from .engine import plan_from_rows
from .planfile import Plan, load_plan, write_plan
from .commands import apply, history, init, make_plan, plan, rollback

__all__ = [
    "__version__",
    "Settings",
    "load_settings",
    "ReconcilerError",
    "Layout",
    "ObjectInfo",
    "build_desired_frames",
    "plan_from_rows",
    "Plan",
    "load_plan",
    "write_plan",
    "apply",
    "history",
    "init",
    "make_plan",
    "plan",
    "rollback",
]
