"""reconciler: keep PostgreSQL catalogue tables in line with what an S3 bucket holds,
through reviewable plans (``plan`` → review → ``apply``), with an audit log and
rollback. The mapping from keys to tables is a catalogue spec (:mod:`reconciler.catalogue`).

Library use::

    from reconciler import Settings, make_plan, write_plan, load_catalogue
    settings = Settings(source="s3://media/", cdn_base_url="https://cdn.example.com",
                        database="postgresql://app@db/prod",
                        catalogue=load_catalogue("creators"))
    plan = make_plan(settings)           # reads only
    write_plan(plan, "plans/today.json")

Without a database or a bucket, from rows in memory::

    from reconciler import ObjectInfo, load_catalogue, plan_from_rows
    objects = [ObjectInfo("Alice/Beach/1.jpg", 10, "e1")]
    result = plan_from_rows(objects, {}, load_catalogue(), cdn_base_url="https://cdn.example.com")
    result.changes                       # creates of Alice, Alice/Beach and its image

The names below are loaded when first used: ``import reconciler.catalogue`` (or
``reconciler.engine.frames``) does not load the database driver, the S3 client or the apply path.
"""

from __future__ import annotations

import importlib

from .version import __version__

# name → the module that defines it
_WHERE = {
    "Settings": "config",
    "load_settings": "config",
    "ReconcilerError": "errors",
    "ObjectInfo": "objects",
    "Catalogue": "catalogue",
    "load_catalogue": "catalogue",
    "plan_from_rows": "engine.plan",
    "Plan": "planfile",
    "load_plan": "planfile",
    "write_plan": "planfile",
    "apply": "commands",
    "explain": "commands",
    "history": "commands",
    "init": "commands",
    "make_plan": "commands",
    "plan": "commands",
    "rollback": "commands",
}

__all__ = ["__version__", *_WHERE]


def __getattr__(name: str):
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'reconciler' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
