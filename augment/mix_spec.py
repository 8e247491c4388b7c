"""What `build-mix` does: the MixSpec and its vocabulary, in a module light enough for the command line to import
at start-up (the mix writer, `augment.mix`, imports torch through the scores folder)."""
from __future__ import annotations

from dataclasses import dataclass

from curate.errors import CurateError

SOURCES = ("top", "neighbors", "synthetic")
CONTROLS = ("random",)
CHUNK_ROWS = 4096
DEFAULT_TOP = 2000  # motif rows (the paper's top ~2,000)


@dataclass(frozen=True)
class MixSpec:
    """What `build-mix` does (the CLI's options)."""

    remove: str | None = None
    augment: str | None = None
    source: str = "top"
    pool: str | None = None
    at_step: int | None = None
    control: str | None = None
    seed: int = 0
    top: int = DEFAULT_TOP
    chunk_rows: int = CHUNK_ROWS

    def validate(self) -> None:
        if self.remove is None and self.augment is None:
            raise CurateError("nothing to do: give rows to remove and/or rows to add")
        if self.source not in SOURCES:
            raise CurateError(f"source {self.source!r}: expected one of {', '.join(SOURCES)}")
        if self.control is not None and self.control not in CONTROLS:
            raise CurateError(f"control {self.control!r}: expected one of {', '.join(CONTROLS)}")
        if self.augment is None and self.at_step is not None:
            raise CurateError("at_step places added rows: it needs rows to add (augment)")
        if self.pool is not None and (self.augment is None or self.source == "top"):
            raise CurateError("a pool is where added rows come from: it needs rows to add (augment) from neighbors or synthetic")
        if self.top < 1:
            raise CurateError(f"top {self.top}: must be at least 1")
        if self.chunk_rows < 1:
            raise CurateError(f"chunk rows must be positive, got {self.chunk_rows}")
