"""Catalogues: the mapping from a bucket's keys to catalogue tables, as data.

A spec (YAML) compiles into one :class:`Catalogue` descriptor; the engine, the plan
file's checks, apply, the audit and ``init`` all read it. ``creators`` (the default)
and ``product-images`` ship with the tool; see ``docs/catalogues.md`` to write one.
"""

from .descriptor import Catalogue, Column, Entity, Rule, Source, Template, Value, compile_spec
from .keys import Reading, plan_keys, read_key, url_of
from .spec import DEFAULT, compile_checked, default_catalogue, load_catalogue, shipped_names

__all__ = [
    "Catalogue", "Column", "Entity", "Rule", "Source", "Template", "Value", "compile_spec",
    "Reading", "plan_keys", "read_key", "url_of",
    "DEFAULT", "compile_checked", "default_catalogue", "load_catalogue", "shipped_names",
]
