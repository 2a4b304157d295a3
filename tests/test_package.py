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
        "catalogue.sql", "catalogue.errors", "engine", "engine.diff", "engine.safety", "engine.moves", "engine.shards",
        "planfile.rules", "controller.events", "errors", "objects"]


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
    assert loaded_after("import reconciler.engine.frames") == ["polars"]


def test_importing_the_package_loads_nothing_heavy():
    assert loaded_after("import reconciler; reconciler.__version__") == []


def test_the_library_names_import_as_before():
    from reconciler import ObjectInfo, Plan, Settings, apply, make_plan, plan_from_rows  # noqa: F401

    namespace: dict = {}
    exec("from reconciler import *", namespace)
    assert set(reconciler.__all__) <= set(namespace) and set(reconciler.__all__) <= set(dir(reconciler))
    # reconciler.apply is the library's apply() function; the apply path is the module
    # reconciler.store.execute, and importing it leaves the name to the function
    assert isinstance(importlib.import_module("reconciler.store.execute"), types.ModuleType)
    assert callable(reconciler.apply) and reconciler.apply is apply and apply.__module__ == "reconciler.commands"
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        reconciler.nothing_here  # noqa: B018


def test_an_installed_copy_has_every_package_and_data_file():
    """``pip install .`` (not editable) copies only what pyproject.toml lists: every
    package of the source tree must be there, and every file that is not Python must
    match a package-data glob (the shipped catalogues, templates, schemas)."""
    import fnmatch
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    from pathlib import Path

    root = Path(reconciler.__file__).resolve().parent
    cfg = tomllib.loads((root.parent / "pyproject.toml").read_text("utf-8"))["tool"]["setuptools"]
    listed = set(cfg["packages"])
    found = {".".join(p.parent.relative_to(root.parent).parts) for p in root.rglob("__init__.py")}
    assert found - {"reconciler.sql"} <= listed, f"not in pyproject's packages: {sorted(found - listed)}"
    for path in root.rglob("*"):
        if path.is_dir() or path.suffix in (".py", ".pyc") or "__pycache__" in path.parts:
            continue
        package = path.parent
        while not (package / "__init__.py").exists():
            package = package.parent
        name = ".".join(package.relative_to(root.parent).parts)
        rel = str(path.relative_to(package))
        globs = cfg["package-data"].get(name, [])
        assert any(fnmatch.fnmatch(rel, g) for g in globs), f"{path.relative_to(root.parent)} is not package data"


# The house, from the ground up: a part imports only parts on its floor or below, and on
# its own floor only itself. Faces (cli, server) over the controller over the commands,
# over the store and the sources, over plan files, over the engine, over the catalogue.
FLOORS = [
    {"errors", "version", "canonical", "objects", "yamlfile", "schemas"},
    {"catalogue"},
    {"engine"},
    {"planfile"},
    {"store"}, {"sources"},
    {"config"}, {"render"},
    {"commands"},
    {"controller"},
    {"server"}, {"cli"}, {"__main__"},
]
FLOOR = {part: i for i, parts in enumerate(FLOORS) for part in parts}
# Parts on one level that must not know each other (the command line starts the server:
# that one may).
SIDE_BY_SIDE = {("store", "sources"), ("sources", "store"), ("config", "render"), ("render", "config"),
                ("server", "cli")}


def imported_parts(path, root) -> set[str]:
    """The top-level parts of the package that one module imports (``from . import x``
    counts as importing x)."""
    import ast

    here = list(path.relative_to(root.parent).parts[:-1])  # the package the module is in
    found = set()
    for node in ast.walk(ast.parse(path.read_text("utf-8"))):
        if not isinstance(node, ast.ImportFrom):
            continue
        if node.level:
            base = here[: len(here) - (node.level - 1)]
            target = base + (node.module.split(".") if node.module else [])
        elif node.module and node.module.split(".")[0] == "reconciler":
            target = node.module.split(".")
        else:
            continue
        if len(target) == 1:  # from reconciler import render, commands
            found |= {a.name for a in node.names}
        else:
            found.add(target[1])
    return found


def test_imports_run_one_way_down_the_house():
    from pathlib import Path

    root = Path(reconciler.__file__).resolve().parent
    wrong = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).parts
        part = Path(rel[0]).stem if len(rel) > 1 or rel[0] != "__init__.py" else None
        if part is None:  # the package's face loads its names lazily
            continue
        for other in imported_parts(path, root) - {part}:
            if other not in FLOOR:
                continue
            if FLOOR[other] > FLOOR[part] or (part, other) in SIDE_BY_SIDE:
                wrong.append(f"{path.relative_to(root.parent)} imports {other}")
    assert not wrong, "imports that run up (or sideways) the house:\n" + "\n".join(wrong)
