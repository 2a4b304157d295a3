"""The folder source: a local folder tree read as a bucket (for trying the tool, and for
tests). A file's key is its path below the folder with ``/``; it has no ETag."""

from __future__ import annotations

import functools
import operator
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Iterator

from ..engine.shards import Shard
from ..errors import SourceError
from ..objects import ObjectInfo


@dataclass
class FolderSource:
    """A local folder treated as a bucket: keys are paths relative to it, with ``/``.

    Symbolic links to files are followed only when their target lies inside the
    folder; linked folders are never entered, so the listing cannot leave the root.
    ``etag`` is None: a folder has no cheap content identity, and reading every file
    to hash it would defeat listing speed.
    """

    path: str

    @property
    def url(self) -> str:
        return self.path

    @property
    def root(self) -> str:
        return ""

    @property
    def public_url(self) -> str:
        """``file://`` and the folder's absolute path: the default base of media URLs."""
        return Path(os.path.abspath(self.path)).as_uri()

    def list(self, scope: Iterable[str] | Shard | None = None, under: str = "") -> Iterator[ObjectInfo]:
        base = os.path.realpath(self.path)
        if not os.path.isdir(base):
            raise SourceError(f"source folder {self.path!r} does not exist or is not a folder; check --source")
        if scope is None:
            yield from self._walk(base, base, "")
            return
        top = os.path.join(base, *under.split("/")[:-1]) if under else base
        if os.path.islink(top) or not os.path.isdir(top):
            return
        if isinstance(scope, Shard):  # the shard's folders among those at the top
            with os.scandir(top) as entries:
                scope = [e.name for e in entries if e.is_dir(follow_symlinks=False) and e.name in scope]
        for k in sorted(set(scope)):
            sub = os.path.join(top, k)
            if "/" in k or k in ("", ".", "..") or os.path.islink(sub) or not os.path.isdir(sub):
                continue
            yield from self._walk(base, sub, under + k + "/")

    def _walk(self, base: str, folder: str, prefix: str) -> Iterator[ObjectInfo]:
        """Depth first, each folder's entries by name (a folder's objects where its name
        sorts), with a stack of folders rather than a generator per level: an object is
        yielded once, not once per level above it."""
        stack = [(_entries(folder), prefix)]
        while stack:
            entries, prefix = stack[-1]
            for entry in entries:
                if entry.is_file(follow_symlinks=False):  # the common case first
                    st = entry.stat(follow_symlinks=False)
                elif entry.is_dir(follow_symlinks=False):
                    stack.append((_entries(entry.path), prefix + entry.name + "/"))
                    break
                elif entry.is_symlink():
                    target = os.path.realpath(entry.path)
                    if os.path.commonpath([base, target]) != base or not os.path.isfile(target):
                        continue
                    st = os.stat(target)
                else:
                    continue
                yield ObjectInfo(prefix + entry.name, st.st_size, None, _mtime_text(int(st.st_mtime)))
            else:
                stack.pop()


def _entries(folder: str) -> Iterator[os.DirEntry]:
    try:
        return iter(sorted(os.scandir(folder), key=operator.attrgetter("name")))
    except OSError as e:
        raise SourceError(f"cannot read folder {folder!r}: {e.strerror}") from None


@functools.lru_cache(maxsize=4096)
def _mtime_text(seconds: int) -> str:
    """A file's modification time as S3 writes LastModified (files written together
    share it: formatting is a third of a folder listing's time otherwise)."""
    return datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


