"""The package's entry: the library's names, and a pure core importable on its own."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import types

import pytest

import reconciler

HEAVY = ("psycopg2", "peewee", "polars", "boto3", "botocore")


def loaded_after(statement: str) -> list[str]:
    """The heavy dependencies in ``sys.modules`` of a fresh interpreter after ``statement``."""
    code = f"import json, sys; {statement}; print(json.dumps([n for n in {HEAVY!r} if n in sys.modules]))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


PURE = ["catalogue", "catalogue.descriptor", "catalogue.patterns", "catalogue.keys", "catalogue.spec",
        "catalogue.planrules", "catalogue.sql", "catalogue.errors", "diff", "safety", "events", "moves", "shards",
        "errors", "objects"]


@pytest.mark.parametrize("module", PURE)
def test_the_pure_core_imports_without_the_database_polars_or_boto3(module):
    assert loaded_after(f"import reconciler.{module}") == []


def test_reading_keys_the_catalogue_way_needs_nothing_heavy():
    # Loading a shipped spec and reading a key is what ``explain`` does: no driver, no frames.
    statement = ("from reconciler.catalogue import load_catalogue, read_key; "
                 "read_key(load_catalogue('creators'), 'Alice/Beach/1.jpg')")
    assert loaded_after(statement) == []


def test_frames_needs_polars_and_nothing_else():
    # The desired rows are built in Polars frames: Polars is what the module is for.
    assert loaded_after("import reconciler.frames") == ["polars"]


def test_importing_the_package_loads_nothing_heavy():
    assert loaded_after("import reconciler; reconciler.__version__") == []


def test_the_library_names_import_as_before():
    from reconciler import ObjectInfo, Plan, Settings, apply, make_plan, plan_from_rows  # noqa: F401

    namespace: dict = {}
    exec("from reconciler import *", namespace)
    assert set(reconciler.__all__) <= set(namespace) and set(reconciler.__all__) <= set(dir(reconciler))
    # reconciler.apply is the library's apply() function; the apply path is the module
    # reconciler.execute, and importing it leaves the name to the function
    assert isinstance(importlib.import_module("reconciler.execute"), types.ModuleType)
    assert callable(reconciler.apply) and reconciler.apply is apply and apply.__module__ == "reconciler.commands"
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        reconciler.nothing_here  # noqa: B018
