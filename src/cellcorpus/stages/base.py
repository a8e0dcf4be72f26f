"""Shared stage types: a frozen, serialisable work unit and the stage summary."""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from cellcorpus.errors import ConfigError
from cellcorpus.exec.runner import ExecutorSpec, Reporter, run_units, warm_up
from cellcorpus.io.lock import hold_locks
from cellcorpus.io.owned import claim_dir
from cellcorpus.io.paths import Publisher, same_location
from cellcorpus.layout import MANIFEST, OUTPUT_RECORDS
from cellcorpus.manifest import Ledger, StageManifest, UnitResult, read_manifest, write_manifest
from cellcorpus.plan import Plan, plan_for

__all__ = [
    "WorkUnit", "row_units", "StageSummary", "StageRun", "run_stage", "decide_rerun", "locked", "stage_locks",
    "warm_up_unless_complete",
]  # fmt: skip

log = logging.getLogger(__name__)
M = TypeVar("M", bound=StageManifest)


F = TypeVar("F", bound=Callable[..., Any])


def stage_locks(plan: Plan, stage: str, source: str | None = None) -> AbstractContextManager[None]:
    """Hold the locks of every local root `stage` (or `run`: every stage) writes, for a `with` block."""
    return hold_locks(plan.layout.write_roots(stage, source), stage)


def locked(stage: str) -> Callable[[F], F]:
    """A stage entry point (`run_x(cfg, spec, ...)`, or `run_download(source, cfg, spec, ...)`): its config is
    resolved into a `Plan` once, here (a plan passed in is used as it is), and the stage runs holding the locks
    of the roots it writes (io/lock.py): a second run on the same output stops at once, naming the first."""

    def wrap(fn: F) -> F:
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def inner(*args: Any, **kwargs: Any) -> Any:
            bound = signature.bind(*args, **kwargs)
            source = bound.arguments.get("source")
            plan = plan_for(bound.arguments["cfg"], stage, bound.arguments.get("spec"), source=source)
            bound.arguments["cfg"] = plan
            if "spec" in signature.parameters:
                bound.arguments["spec"] = plan.executor
            with stage_locks(plan, stage, source):
                return fn(*bound.args, **bound.kwargs)

        return inner  # type: ignore[return-value]

    return wrap


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


class BatchWriter(Protocol):
    """Receives every batch a fused pass writes, in order (see FusedExport)."""

    def add(self, batch: Any) -> None:
        """Encode one written batch."""


class BucketWriter(BatchWriter, Protocol):
    def finish(self, checksum: str) -> None:
        """The data file (xxh64 `checksum`) is complete: the export finishes and records its own unit for it."""


class ScratchWriter(BatchWriter, Protocol):
    def close(self) -> None:
        """The part is complete; its export waits in scratch until `FusedExport.adopt`."""


class FusedExport(Protocol):
    """An export another stage owns, written in tokenize's Arrow pass (the MDS shards, by `cellcorpus run`):
    tokenize hands it each batch it writes; the owner writes its files and its own completion records, so
    tokenize never writes another stage's records (the implementation: stages/mds_unit.FusedMds)."""

    splits: tuple[str, ...]

    def scratch_ok(self, split: str) -> bool:
        """Whether unshuffled tokenize units write `split`'s export into scratch."""

    def scratch_writer(self, split: str, unit_id: str, part: str, n_cells: int) -> ScratchWriter:
        """A writer for a tokenize unit's part (unshuffled)."""

    def bucket_writer(self, split: str, index: int, path: str, n_cells: int) -> BucketWriter:
        """A writer for the split's `index`-th data file (a shuffle bucket)."""

    def clear_stale(self) -> None:
        """Scratch of other settings is removed."""

    def adopt(self, split: str, unit_id: str, index: int, target: Path, record: dict[str, Any]) -> None:
        """A unit's scratch export becomes the split's `index`-th, for data file `target`, and is recorded."""

    def discard(self, split: str, unit_id: str) -> None:
        """A unit's scratch export is not adopted (its part was written again): the owner converts the file."""

    def clear_scratch(self, split: str) -> None:
        """The split's scratch, once every part was adopted."""


def row_units(inputs: Sequence[Any], unit_cells: int) -> list[WorkUnit]:
    """(file, row range) units of at most `unit_cells` rows of each input (`InputFile`), by file then row."""
    units = []
    for f in inputs:
        for start in range(0, f.n_obs, unit_cells):
            stop = min(start + unit_cells, f.n_obs)
            units.append(WorkUnit(f"f{f.file_index:05d}-r{start:010d}", f.path, f.file_index, start, stop, f.checksum))
    return units


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
    settings: dict[str, Any] | None = None,
    appending: bool = False,
) -> M | None:
    """Skip, refuse or rebuild a stage's output, decided before anything on disk is touched.

    `markers` are the files whose presence makes an output complete (a split's state.json or index.json).
    Returns the finished run's manifest when it is complete for this stage hash (settings + inputs); raises
    a ConfigError naming `key` when proceeding would overwrite a finished `what` made with other settings
    or not by cellcorpus, or (`settings["source"]`) from another source folder; returns None when the stage
    should (re)build (`appending`: add to it, keeping its files). Completion records of other settings raise
    too, before any change. The refusal names what differs from the settings the finished output recorded.
    """
    previous = read_manifest(out, "manifest.json", model)  # damaged: an error here, before any change
    complete = [m for m in markers if out.exists(m)]
    if previous and len(complete) == len(markers):
        if previous.config_hash == stage_hash:
            return previous
        old, new = previous.settings or {}, settings or {}
        moved = "source" in old and "source" in new and not same_location(old["source"], new["source"])
        if previous.settings_hash != settings_hash or moved:
            diff = settings_diff(old, new) if previous.settings is not None else ""
            raise ConfigError(
                f"{key}: {out.root} holds a finished {what} made with other settings"
                + (f" ({diff})" if diff else "")
                + "; it is left untouched",
                hint=f"use a new {key.split('.')[-1]}, or delete the old {what} to rebuild",
            )
        if appending:
            log.info("appending to the finished output at %s", out.root)
        else:
            log.warning("inputs changed since the finished run: rebuilding %s", out.root)
    recorded = ledger.done()  # read once; records of other settings raise here
    if complete and not previous and not recorded:
        location = out.url(complete[0].rsplit("/", 1)[0])
        raise ConfigError(
            f"{key}: {location} holds a {what} without a cellcorpus manifest; it is left untouched",
            hint=f"use a new {key.split('.')[-1]}, or delete it",
        )
    return None


def settings_diff(old: dict[str, Any], new: dict[str, Any], limit: int = 4) -> str:
    """`key: old -> new` for the (dotted) settings that differ, at most `limit` of them."""

    def flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) and v else {f"{prefix}{k}": v})
        return out

    a, b = flat(old), flat(new)
    changed = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    shown = [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in changed[:limit]]
    return "; ".join(shown) + (f"; and {len(changed) - limit} more" if len(changed) > limit else "")


@dataclass
class StageRun(Generic[M]):
    """One stage, described for `run_stage`: its output and identity, its units, and how to finish.

    A stage module builds one (after its own checks) and hands it over; `run_stage` owns the rest, the same
    for every stage: decide skip / refuse / rebuild, clear stale markers, run pending units through the
    ledger, finalize, write the manifest last and publish it.
    """

    name: str
    out: Publisher
    markers: list[str]  # files that make the output complete (written by `finalize`, removed before a rebuild)
    key: str  # the config key named when a finished output is refused
    what: str
    settings_hash: str
    stage_hash: str
    manifest_model: type[M]
    ledger: Ledger
    plan: Callable[[], Sequence[Any]]
    run_unit: Callable[[Any, Any], UnitResult]
    context: Any
    # (units, results in unit order) -> (manifest body, summary); writes the data's markers, last
    finalize: Callable[[Sequence[Any], list[UnitResult]], tuple[dict[str, Any], StageSummary]]
    skipped: Callable[[M], StageSummary]  # the summary when the output is already complete
    cells_of: Callable[[Any], int] = lambda u: 0
    is_current: Callable[[Any, UnitResult], bool] = lambda u, r: True
    after_manifest: Callable[[], None] = lambda: None  # cleanup once the manifest is the completion record
    settings: dict[str, Any] | None = None  # recorded in the manifest: what a refusal names as different
    appending: bool = False  # new inputs are added to the finished output (tokenize's --append), not a rebuild
    # called in this process as each unit of this run finishes (see `run_units`): what is kept of its result
    keep: Callable[[Any, UnitResult], UnitResult] | None = None


def warm_up_unless_complete(spec: ExecutorSpec, out_dir: Path, markers: Sequence[str], modules: Sequence[str]) -> None:
    """Start the workers (`warm_up`) while the stage checks its inputs, unless the output's markers are all there:
    a stage that will be skipped then starts none, and does not wait for them at its end."""
    if not all((out_dir / m).exists() for m in markers):
        warm_up(spec, modules)


def run_stage(stage: StageRun[M], spec: ExecutorSpec, reporter: Reporter | None) -> StageSummary:
    """Run a described stage: nothing on disk changes before the decision; the manifest is written last."""
    previous = decide_rerun(
        stage.out,
        stage.markers,
        key=stage.key,
        what=stage.what,
        stage_hash=stage.stage_hash,
        settings_hash=stage.settings_hash,
        ledger=stage.ledger,
        model=stage.manifest_model,
        settings=stage.settings,
        appending=stage.appending,
    )
    if previous is not None:
        return stage.skipped(previous)
    claim_dir(stage.out.local_dir, stage.key, OUTPUT_RECORDS)  # a folder of someone else's is refused, not used
    units = stage.plan()
    for marker in stage.markers:  # decided to rebuild: a stale marker must never make half-done work look complete
        stage.out.remove(marker)
    results = run_units(
        stage.run_unit,
        units,
        stage.context,
        stage.ledger,
        spec,
        description=stage.name,
        cells_of=stage.cells_of,
        reporter=reporter,
        is_current=stage.is_current,
        keep=stage.keep,
    )
    body, summary = stage.finalize(units, [results[u.unit_id] for u in units])
    manifest_path = stage.out.local_dir / MANIFEST
    write_manifest(
        manifest_path,
        stage.manifest_model,
        stage=stage.name,
        config_hash=stage.stage_hash,
        settings_hash=stage.settings_hash,
        settings=stage.settings,
        **body,
    )
    stage.out.publish(manifest_path)
    stage.after_manifest()
    return summary
