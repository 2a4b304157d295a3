"""A problem in a catalogue spec, at a path in it (``catalogue.entities.image.parent.entity``)."""

from __future__ import annotations


class SpecError(Exception):
    """One problem: where in the spec, and what is wrong there. Collected by the
    compiler, which reports them all at once as one :class:`~reconciler.errors.CatalogueError`."""

    def __init__(self, where: str, message: str) -> None:
        super().__init__(f"{where}: {message}")
        self.where, self.message = where, message
