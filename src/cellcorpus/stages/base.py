"""Shared stage types: a frozen, serialisable work unit and the stage summary."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["WorkUnit", "StageSummary"]


@dataclass(frozen=True, order=True)
class WorkUnit:
    """A bounded piece of work: rows [row_start, row_stop) of input `path` (file number `file_index`)."""

    unit_id: str
    path: str
    file_index: int
    row_start: int
    row_stop: int
    checksum: str = ""  # of the input file: a unit recorded for other bytes is redone

    @property
    def n_cells(self) -> int:
        """Cells (rows) in the unit."""
        return self.row_stop - self.row_start


@dataclass
class StageSummary:
    """What a stage did, for the one-line summary the CLI prints."""

    stage: str
    skipped: bool = False
    counts: dict[str, int] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
