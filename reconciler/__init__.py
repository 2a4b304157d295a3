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

import importlib
import sys
import types

from .version import __version__

# The library's names, each imported from its module on first use (PEP 562): the pure
# core (``import reconciler.layout``, ``diff``, ``safety``, ``events``…) loads neither
# the database driver, peewee, Polars nor boto3, and ``reconciler --help`` stays quick.
_LAZY = {
    "Settings": "config",
    "load_settings": "config",
    "ReconcilerError": "errors",
    "Layout": "layout",
    "ObjectInfo": "layout",
    "build_desired_frames": "frames",
    "plan_from_rows": "engine",
    "Plan": "planfile",
    "load_plan": "planfile",
    "write_plan": "planfile",
    "apply": "commands",
    "history": "commands",
    "init": "commands",
    "make_plan": "commands",
    "plan": "commands",
    "rollback": "commands",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


class _Package(types.ModuleType):
    def __setattr__(self, name: str, value) -> None:
        # Importing the submodule reconciler.apply binds it here, by the name that the
        # library gives its apply() function: the function keeps the name, as it did
        # when this package imported everything up front.
        if name == "apply" and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
