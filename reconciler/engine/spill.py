"""Frames too big to hold: kept as Arrow IPC files in a private temporary folder.

Planning keeps a batch of whole models in memory at a time (:mod:`reconciler.engine.plan`);
what waits for its batch — the classified listing, the current media, the changes
already made — waits here, on disk. Below ``rows`` rows nothing is written: a small
bucket plans entirely in memory, as before.

The folder is made under the system's temporary folder (``$TMPDIR``) on first use and
removed when the plan is done with it (or at exit). Where ``$TMPDIR`` is a RAM-backed
``tmpfs``, point it at a disk to keep the memory bound.
"""

from __future__ import annotations

import itertools
import os
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, Iterator

import polars as pl


class Spill:
    """A spill folder, made on first use; frames of more than ``rows`` rows (or
    ``bytes``) in all go there."""

    def __init__(self, rows: int, bytes: int = 64 << 20) -> None:
        self.rows, self.bytes = rows, bytes
        self._dir: tempfile.TemporaryDirectory | None = None
        self._names = itertools.count()
        self._remover: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    @property
    def folder(self) -> str:
        with self._lock:  # the planner's second connection writes here too, from its thread
            if self._dir is None:
                self._dir = tempfile.TemporaryDirectory(prefix="reconciler-plan-")
            return self._dir.name

    def path(self, suffix: str = ".ipc") -> str:
        return os.path.join(self.folder, f"{next(self._names):06d}{suffix}")

    def remove(self, files: list[str]) -> None:
        """Remove files that have been read for good, in the background (freeing a
        big file's pages takes the kernel a while)."""
        if self._remover is None:
            self._remover = ThreadPoolExecutor(max_workers=1, thread_name_prefix="spill-remove")
        self._remover.submit(_unlink, list(files))

    def close(self) -> None:
        if self._remover is not None:
            self._remover.shutdown(wait=True)
            self._remover = None
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None


def _unlink(files: list[str]) -> None:
    for f in files:
        try:
            os.unlink(f)
        except OSError:
            pass


class Parts:
    """Frames of one schema, in order: held in memory until they exceed the spill's
    ``rows``, then written to IPC files (those before too)."""

    def __init__(self, schema: dict, spill: Spill | None) -> None:
        self.schema = schema
        self.spill = spill
        self.frames: list[pl.DataFrame] = []
        self.files: list[str] = []
        self.rows = 0
        self._bytes = 0

    @classmethod
    def of(cls, frame: pl.DataFrame, spill: Spill | None = None) -> "Parts":
        parts = cls(dict(frame.schema), spill)
        parts.add(frame)
        return parts

    def add(self, frame: pl.DataFrame) -> None:
        if not frame.height:
            return
        self.rows += frame.height
        self._bytes += frame.estimated_size()
        # Rows or bytes: 100k posts' updates are 100k rows but 700 MB of URL lists.
        if self.files or (self.spill is not None and (self.rows > self.spill.rows or self._bytes > self.spill.bytes)):
            for f in self.frames:
                self._write(f)
            self.frames = []
            self._write(frame)
        else:
            self.frames.append(frame)

    def _write(self, frame: pl.DataFrame) -> None:
        path = self.spill.path()
        frame.write_ipc(path, compression="uncompressed")
        self.files.append(path)

    def frame(self) -> pl.DataFrame:
        """All rows, in order, as one frame."""
        if self.files:
            return pl.read_ipc(self.files) if len(self.files) > 1 else pl.read_ipc(self.files[0])
        if not self.frames:
            return pl.DataFrame(schema=self.schema)
        return pl.concat(self.frames) if len(self.frames) > 1 else self.frames[0]

    def discard(self) -> None:
        """Forget the rows (and remove their files): they have been read for good."""
        if self.files:
            self.spill.remove(self.files)
        self.frames, self.files, self.rows, self._bytes = [], [], 0, 0

    def lazy(self) -> pl.LazyFrame:
        if self.files:
            return pl.scan_ipc(self.files)
        return self.frame().lazy()

    def slices(self, size: int) -> Iterator[pl.DataFrame]:
        """The rows in order, ``size`` at a time (a file is read a slice at a time)."""
        for f in self.files:  # a file holds at most a batch: read at once
            frame = pl.read_ipc(f)
            for start in range(0, frame.height, size):
                yield frame.slice(start, size)
            del frame
        for frame in self.frames:
            for start in range(0, frame.height, size):
                yield frame.slice(start, size)

    def blocks(self) -> Iterator[pl.DataFrame]:
        """The rows in order, a part at a time."""
        for f in self.files:
            yield pl.read_ipc(f)
        yield from self.frames

    def split(self, batch: pl.Expr, n: int) -> list["Parts"]:
        """The rows divided into ``n`` parts by ``batch`` (an integer expression from 0
        to n - 1), each part in the original order; spilled rows stay spilled."""
        return split(self.blocks(), self.schema, batch, n, self.spill if self.files else None)


def split(blocks: Iterable[pl.DataFrame], schema: dict, batch: pl.Expr, n: int, spill: Spill | None) -> list[Parts]:
    """Frames divided into ``n`` parts by ``batch``, a block at a time: with ``spill``,
    every piece goes straight to a file (nothing waits in memory for its batch)."""
    out = [Parts(schema, spill) for _ in range(n)]
    for block in blocks:
        pieces = block.with_columns(batch.alias("_batch")).partition_by("_batch", as_dict=True, maintain_order=True)
        del block
        for (b,), piece in pieces.items():
            piece = piece.drop("_batch")
            if spill is None:
                out[b].add(piece)
            else:
                out[b].rows += piece.height
                out[b]._write(piece)
    return out


def by_top(frame: pl.DataFrame, column: str, index_of: Callable[[str], int]) -> dict[int, pl.DataFrame]:
    """The rows of ``frame`` by ``index_of`` the top key in ``column``: a batch or a
    range of top rows. Each distinct top key is looked up once."""
    mapping = {name: index_of(name) for name in frame.select(pl.col(column).unique()).to_series().to_list()}
    if len(set(mapping.values())) <= 1:
        return {mapping.popitem()[1]: frame} if mapping else {}
    parts = frame.with_columns(pl.col(column).replace_strict(mapping, return_dtype=pl.Int32).alias("_index"))
    return {index: part.drop("_index") for (index,), part in parts.partition_by("_index", as_dict=True).items()}
