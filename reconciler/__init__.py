"""reconciler: keep a PostgreSQL content catalogue in line with an S3 bucket,
through reviewable plans (``plan`` → review → ``apply``), with an audit log and
rollback.

Library use::

    from reconciler import Settings, make_plan, write_plan, load_plan
    settings = Settings(source="s3://media/", cdn_base_url="https://cdn.example.com",
                        database="postgresql://app@db/prod")
    plan = make_plan(settings)           # reads only
    write_plan(plan, "plans/today.json")
"""

from .version import __version__
from .config import Settings, load_settings
from .errors import ReconcilerError
from .layout import Layout, ObjectInfo
from .desired import build_desired
from .planfile import Plan, load_plan, write_plan
from .commands import apply, history, init, make_plan, plan, rollback

__all__ = [
    "__version__",
    "Settings",
    "load_settings",
    "ReconcilerError",
    "Layout",
    "ObjectInfo",
    "build_desired",
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
