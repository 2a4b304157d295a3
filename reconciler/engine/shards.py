"""Sharded plans: the top entity's keys split over N shards by a stable hash. Pure.

A top key (a model's folder name for creators, a product's id for product-images:
the plan key of the top entity, ``p42``) belongs to shard ``K`` of ``N`` (``K`` counts
from 1, as in ``--shard 1/4`` … ``--shard 4/4``) when

    int.from_bytes(sha256(top_key.encode("utf-8")).digest()[:8], "big") % N == K - 1

— the first 8 bytes of the SHA-256 of the UTF-8 key, read big-endian, modulo N. The
same key lands in the same shard on every machine, in every Python version and in any
other language, so a CI matrix or a Kubernetes indexed Job (whose ``JOB_COMPLETION_INDEX``
counts from 0: pass ``$((JOB_COMPLETION_INDEX + 1))/N``) splits the work without talking.

A shard plan is a ``--scope`` plan whose top keys are chosen by the hash: it lists only
their folders, reads and digests only their rows, and changes nothing outside them, so
the N plans made together apply independently, in any order. A top folder renamed into
another shard is a delete in one shard plan and a create in the other (never a move),
since no single shard sees both names.
"""

from __future__ import annotations

import hashlib
import re

from ..errors import ConfigError

MAX_SHARDS = 10_000


def shard_index(name: str, count: int) -> int:
    """The 0-based shard of a top key among ``count`` shards."""
    # surrogateescape: a folder source's undecodable file name still hashes (and stays
    # put); any other lone surrogate is hashed as its code point's bytes.
    try:
        data = name.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        data = name.encode("utf-8", "surrogatepass")
    digest = hashlib.sha256(data).digest()
    return int.from_bytes(digest[:8], "big") % count


class Shard:
    """Shard ``number`` (1-based) of ``count``: a container of top keys (``key in shard``).

    Not iterable: the members are whatever keys the source and the database hold.
    ``saw_others`` turns true once a key of another shard was asked about — the
    source is then not empty, even if this shard's part of it is.
    """

    __slots__ = ("number", "count", "saw_others", "_memo")

    def __init__(self, number: int, count: int) -> None:
        if not 1 <= count <= MAX_SHARDS:
            raise ConfigError(f"shard count {count} is out of range: use 1 to {MAX_SHARDS}")
        if not 1 <= number <= count:
            raise ConfigError(f"shard {number}/{count} does not exist: K counts from 1 to N in --shard K/N")
        self.number, self.count = number, count
        self.saw_others = False
        self._memo: dict[str, bool] = {}  # a listing asks about the same few keys millions of times

    def __contains__(self, name: object) -> bool:
        hit = self._memo.get(name)  # type: ignore[arg-type]
        if hit is None:
            if not isinstance(name, str):
                return False
            hit = self._memo[name] = shard_index(name, self.count) == self.number - 1
        if not hit:
            self.saw_others = True
        return hit

    def __str__(self) -> str:
        return f"{self.number}/{self.count}"

    def __repr__(self) -> str:
        return f"Shard({self.number}, {self.count})"

    def __eq__(self, other) -> bool:
        return isinstance(other, Shard) and (self.number, self.count) == (other.number, other.count)

    def __hash__(self) -> int:
        return hash((self.number, self.count))


_SPEC = re.compile(r"\s*(\d+)\s*/\s*(\d+)\s*\Z")


def parse_shard(text: str) -> Shard:
    """``"K/N"`` (K from 1 to N) as a :class:`Shard`; a ConfigError names the mistake."""
    m = _SPEC.match(text or "")
    if not m:
        raise ConfigError(f"--shard {text!r} is not K/N (for example 1/4; K counts from 1)")
    return Shard(int(m.group(1)), int(m.group(2)))
