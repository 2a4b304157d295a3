"""Finding, reading and checking a catalogue spec.

``catalogue:`` in the config file is a shipped catalogue's name (``creators``, the
default; ``product-images``), the path of a YAML file (relative to the config file), or
the spec itself, inline. :func:`load_catalogue` reads it, checks it against
``catalogue.schema.json`` and compiles it (:mod:`.descriptor`), and reports every
problem at once as one :class:`~reconciler.errors.CatalogueError` line.
"""

from __future__ import annotations

import copy
import functools
import json
import os
from functools import lru_cache
from importlib import resources
from typing import Any

from ..errors import CatalogueError
from .descriptor import Catalogue, SpecErrors, compile_spec

DEFAULT = "creators"


def shipped_names() -> list[str]:
    folder = resources.files("reconciler.catalogue").joinpath("shipped")
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


@lru_cache(maxsize=1)
def _schema() -> dict:
    return json.loads(resources.files("reconciler.schemas").joinpath("catalogue.schema.json").read_text("utf-8"))


def _path(error) -> str:
    out = "catalogue"
    for p in error.absolute_path:
        out += f"[{p}]" if isinstance(p, int) else f".{p}"
    return out


def _describe(error) -> str:
    where = _path(error)
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        unknown = sorted(set(error.instance) - set(allowed), key=str)
        return f"{where}: unknown key {str(unknown[0])!r}" + (f" (known: {', '.join(allowed)})" if allowed else "")
    if error.validator == "required":
        return f"{where}: {error.message.split(' is ')[0]} is required"
    if error.validator == "enum":
        return f"{where}: {error.instance!r} is not one of {', '.join(map(str, error.validator_value))}"
    if error.validator == "oneOf":
        return f"{where}: not a valid value here (see docs/catalogues.md)"
    if error.validator == "pattern":
        return f"{where}: {error.instance!r} does not have the right form"
    if error.validator == "type":
        return f"{where}: must be {error.validator_value if isinstance(error.validator_value, str) else ' or '.join(error.validator_value)}"
    return f"{where}: {error.message}"


def check_schema(spec: Any, origin: str) -> None:
    import jsonschema

    validator = jsonschema.Draft202012Validator(_schema())
    errors = sorted(validator.iter_errors(spec), key=lambda e: (list(map(str, e.absolute_path)), e.validator))
    if errors:
        # The deepest error at each path says the most; one line for all of them.
        seen, lines = set(), []
        for e in errors:
            line = _describe(e)
            if line not in seen:
                seen.add(line)
                lines.append(line)
        raise CatalogueError(_summary(origin, lines))


def _summary(origin: str, lines: list[str]) -> str:
    many = f"{len(lines)} problems: " if len(lines) > 1 else ""
    return f"catalogue spec {origin}: {many}" + "; ".join(lines)


def compile_checked(spec: Any, origin: str) -> Catalogue:
    """Check a spec's shape and meaning and compile it; one error line for every problem."""
    check_schema(spec, origin)
    try:
        return compile_spec(spec)
    except SpecErrors as e:
        raise CatalogueError(_summary(origin, [str(x) for x in e.errors])) from None


def read_spec_file(path: str):
    from ..yamlfile import read_yaml

    return read_yaml(path, "catalogue spec", "check catalogue: in the config (a file, or a shipped catalogue: "
                     f"{', '.join(shipped_names())})", CatalogueError)


def shipped_spec(name: str) -> dict:
    folder = resources.files("reconciler.catalogue").joinpath("shipped")
    path = folder.joinpath(f"{name}.yaml")
    if not path.is_file():
        raise CatalogueError(f"there is no shipped catalogue {name!r} (shipped: {', '.join(shipped_names())}); "
                             "or name a spec file, FILE.yaml")
    import yaml

    return yaml.safe_load(path.read_text("utf-8"))


def resolve_spec(ref: Any, base_dir: str | None = None) -> tuple[dict, str]:
    """The spec ``ref`` names and where it came from: None (the default), a shipped
    name, a file path (relative to ``base_dir``), or the spec itself."""
    if ref is None:
        ref = DEFAULT
    if isinstance(ref, dict):
        return ref, "in the config file"
    if not isinstance(ref, str) or not ref:
        raise CatalogueError("catalogue: must be a shipped catalogue's name, a spec file, or the spec itself")
    if ref.endswith((".yaml", ".yml", ".json")) or os.sep in ref or "/" in ref:
        path = ref if os.path.isabs(ref) or base_dir is None else os.path.join(base_dir, ref)
        return read_spec_file(path), path
    return shipped_spec(ref), f"{ref!r} (shipped)"


@functools.lru_cache(maxsize=1)
def default_catalogue() -> Catalogue:
    """The creators catalogue, as shipped (compiled once): what a plan that names no
    catalogue, and a configuration that names none, mean."""
    return load_catalogue()


def load_catalogue(ref: Any = None, base_dir: str | None = None, layout: dict | None = None) -> Catalogue:
    """The compiled catalogue ``ref`` names (see :func:`resolve_spec`). ``layout`` (the
    config file's ``layout:`` section) adjusts the creators catalogue's classes and
    profile folder, as it did before catalogues."""
    spec, origin = resolve_spec(ref, base_dir)
    if layout:
        spec = with_layout(spec, layout, origin)
    return compile_checked(spec, origin)


def with_layout(spec: Any, layout: dict, origin: str) -> Any:
    """The creators spec with the config's ``layout:`` applied: ``images`` and
    ``videos`` are its classes, ``profile_folder``, ``icon_names`` and
    ``banner_names`` its profile rules. Refused for other catalogues, whose spec says
    all of that itself."""
    if not isinstance(spec, dict) or spec.get("name") != "creators":
        raise CatalogueError(f"layout: in the config adjusts the creators catalogue only; catalogue {origin} "
                             "says its classes and rules itself")
    spec = copy.deepcopy(spec)
    classes = spec.setdefault("classes", {})
    if "images" in layout:
        classes["image"] = [e.lstrip(".") for e in layout["images"]]
    if "videos" in layout:
        classes["video"] = [e.lstrip(".") for e in layout["videos"]]
    folder = layout.get("profile_folder", "profile")
    words = {"profile-icon": layout.get("icon_names"), "profile-banner": layout.get("banner_names")}
    for rule in spec["rules"]:
        name = rule.get("name")
        if name in words:
            names = words[name] or rule["match"].split("{stem:")[1].split("}")[0].split("|")
            rule["match"] = "{model}/" + folder + "/{stem:" + "|".join(n.lower() for n in names) + "}.{ext:image}"
        elif name == "profile-other":
            rule["match"] = "{model}/" + folder + "/**"
    return spec
