"""Shared stage types: a frozen, serialisable work unit and the stage summary."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TypeVar

from cellcorpus.errors import ConfigError
from cellcorpus.io.paths import Publisher
from cellcorpus.manifest import Ledger, StageManifest

__all__ = ["WorkUnit", "StageSummary", "decide_rerun"]

log = logging.getLogger(__name__)
M = TypeVar("M", bound=StageManifest)


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


def decide_rerun(
    out: Publisher,
    markers: list[str],
    *,
    key: str,
    what: str,
    stage_hash: str,
    settings_hash: str,
    ledger: Ledger,
    model: type[M],
) -> M | None:
    """Skip, refuse or rebuild a stage's output, decided before anything on disk is touched.

    `markers` are the files whose presence makes an output complete (a split's state.json or index.json).
    Returns the finished run's manifest when it is complete for this stage hash (settings + inputs); raises
    a ConfigError naming `key` when proceeding would overwrite a finished `what` made with other settings
    or not by cellcorpus; returns None when the stage should (re)build. Completion records of other
    settings raise too, before any change.
    """
    previous = out.read_manifest("manifest.json", model)  # damaged: an error here, before any change
    complete = [m for m in markers if out.exists(m)]
    if previous and len(complete) == len(markers):
        if previous.config_hash == stage_hash:
            return previous
        if previous.settings_hash != settings_hash:
            raise ConfigError(
                f"{key}: {out.root} holds a finished {what} made with other settings; it is left untouched",
                hint=f"use a new {key.split('.')[-1]}, or delete the old {what} to rebuild",
            )
        log.warning("inputs changed since the finished run: rebuilding %s", out.root)
    elif complete and not previous and not ledger.done():
        location = out.url(complete[0].rsplit("/", 1)[0])
        raise ConfigError(
            f"{key}: {location} holds a {what} without a cellcorpus manifest; it is left untouched",
            hint=f"use a new {key.split('.')[-1]}, or delete it",
        )
    ledger.done()
    return None
