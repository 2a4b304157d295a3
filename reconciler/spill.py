"""Frames too big to hold: kept as Arrow IPC files in a private temporary folder.

Planning keeps a batch of whole models in memory at a time (:mod:`reconciler.engine`);
what waits for its batch — the classified listing, the current media, the changes
already made — waits here, on disk. Below ``rows`` rows nothing is written: a small
bucket plans entirely in memory, as before.

The folder is made under the system's temporary folder (``$TMPDIR``) on first use and
removed when the plan is done with it (or at exit). Where ``$TMPDIR`` is a RAM-backed
``tmpfs``, point it at a disk to keep the memory bound.
"""

from __future__ import annotations

import glob
import itertools
import os
import tempfile
from typing import Iterator

import polars as pl


class Spill:
    """A spill folder, made on first use; frames of more than ``rows`` rows in all go there."""

    def __init__(self, rows: int) -> None:
        self.rows = rows
        self._dir: tempfile.TemporaryDirectory | None = None
        self._names = itertools.count()

    @property
    def folder(self) -> str:
        if self._dir is None:
            self._dir = tempfile.TemporaryDirectory(prefix="reconciler-plan-")
        return self._dir.name

    def path(self, suffix: str = ".ipc") -> str:
        return os.path.join(self.folder, f"{next(self._names):06d}{suffix}")

    def close(self) -> None:
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None


class Parts:
    """Frames of one schema, in order: held in memory until they exceed the spill's
    ``rows``, then written to IPC files (those before too)."""

    def __init__(self, schema: dict, spill: Spill | None) -> None:
        self.schema = schema
        self.spill = spill
        self.frames: list[pl.DataFrame] = []
        self.files: list[str] = []
        self.rows = 0

    @classmethod
    def of(cls, frame: pl.DataFrame, spill: Spill | None = None) -> "Parts":
        parts = cls(dict(frame.schema), spill)
        parts.add(frame)
        return parts

    @classmethod
    def from_files(cls, schema: dict, files: list[str], spill: Spill | None) -> "Parts":
        parts = cls(schema, spill)
        parts.files = files
        parts.rows = sum(pl.scan_ipc(f).select(pl.len()).collect().item() for f in files)
        return parts

    def add(self, frame: pl.DataFrame) -> None:
        if not frame.height:
            return
        self.rows += frame.height
        if self.files or (self.spill is not None and self.rows > self.spill.rows):
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
        for f in self.files:
            try:
                os.unlink(f)
            except OSError:
                pass
        self.frames, self.files, self.rows = [], [], 0

    def lazy(self) -> pl.LazyFrame:
        if self.files:
            return pl.scan_ipc(self.files)
        return self.frame().lazy()

    def slices(self, size: int) -> Iterator[pl.DataFrame]:
        """The rows in order, ``size`` at a time (a file is read a slice at a time)."""
        for f in self.files:
            lazy = pl.scan_ipc(f)
            n = lazy.select(pl.len()).collect().item()
            for start in range(0, n, size):
                yield lazy.slice(start, size).collect()
        for frame in self.frames:
            for start in range(0, frame.height, size):
                yield frame.slice(start, size)

    def split(self, batch: pl.Expr, n: int) -> list["Parts"]:
        """The rows divided into ``n`` parts by ``batch`` (an integer expression from 0
        to n - 1), each part in the original order."""
        return split(self.lazy(), self.schema, batch, n, self.spill if self.files else None)


def split(lazy: pl.LazyFrame, schema: dict, batch: pl.Expr, n: int, spill: Spill | None) -> list[Parts]:
    """``lazy`` divided into ``n`` parts by ``batch``; streamed to files in one pass when
    ``spill`` is given, else in memory."""
    if spill is None:
        frame = lazy.with_columns(batch.alias("_batch")).collect()
        out = [Parts(schema, None) for _ in range(n)]
        for (b,), part in frame.partition_by("_batch", as_dict=True, maintain_order=True).items():
            out[b].add(part.drop("_batch"))
        return out
    folder = spill.path(suffix="")
    lazy.with_columns(batch.alias("_batch")).sink_ipc(
        pl.PartitionBy(folder, key="_batch", include_key=False), mkdir=True
    )
    return [
        Parts.from_files(schema, sorted(glob.glob(os.path.join(folder, f"_batch={b}", "*.ipc"))), spill)
        for b in range(n)
    ]
