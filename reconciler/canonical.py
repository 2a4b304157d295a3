"""The canonical JSON text of a value: what plan ids hash, and how plan files write
each change (``json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)``)."""

from __future__ import annotations

import json

import orjson

# One encoder, reused: json.dumps() would build one per call. Without indent it runs
# in C, which is what makes hashing a million changes cheap.
_CANON = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def canonical(obj) -> str:
    """``json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)``."""
    return _CANON.encode(obj)


def canonical_checked(obj) -> str:
    """:func:`canonical` of values without floats (changes that passed the plan's
    checks), by orjson: the same text, several times faster. Anything orjson will not
    encode as ``json`` does (a lone surrogate, an integer beyond 64 bits, a key that is
    not a string) goes to :func:`canonical`."""
    try:
        return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS).decode("utf-8")
    except TypeError:
        return canonical(obj)
