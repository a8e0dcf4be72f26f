"""One MDS writer sub-folder from Arrow batches, and the MDS stage's identity.

Shared by `cellcorpus mds` (a unit converts one Arrow data file) and tokenize's fused pass (a shuffle
unit encodes each batch of its data file as it writes it, so `run` passes over the tokens once). Both
produce the same bytes and the same completion record, so the mds stage finds fused units done.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import pyarrow as pa
import pyarrow.compute as pc

from cellcorpus.config import MDS_LOCATION_KEYS, HuggingfaceConfig, MdsConfig, config_hash
from cellcorpus.encodings import produced_columns
from cellcorpus.errors import InputError
from cellcorpus.formats.mds import MdsSpec, ShardWriter, TorchPickler, encode_samples
from cellcorpus.io.owned import is_owned
from cellcorpus.io.paths import Publisher, same_location
from cellcorpus.layout import mds_publisher
from cellcorpus.manifest import Ledger, MdsManifest, UnitResult
from cellcorpus.plan import Plan
from cellcorpus.stages.base import decide_rerun

__all__ = [
    "MdsUnit",
    "MdsContext",
    "MdsUnitWriter",
    "MdsIdentity",
    "mds_identity",
    "mds_context",
    "convert_file",
    "publish_unit",
    "sub_dir_of",
    "unit_id_of",
    "BATCH_ROWS",
    "FusedMds",
    "fused_export",
]

BATCH_ROWS = 2048  # rows encoded per Arrow compute call: bounds memory to a few batches + one shard


@dataclass(frozen=True, order=True)
class MdsUnit:
    """One Arrow data file of a split, converted by one writer into its own sub-folder."""

    unit_id: str
    path: str  # the Arrow data file
    split: str
    sub_dir: str
    n_cells: int
    checksum: str = ""  # xxh64 of the Arrow file (from the tokenize manifest): a changed file is redone


@dataclass(frozen=True)
class MdsContext:
    """What every MDS unit shares: writer spec, output root, min_length and the token column it counts."""

    spec: MdsSpec
    out: Publisher
    min_length: int | None
    tokens: str = "genes"


@functools.lru_cache(maxsize=1)
def _pickler() -> TorchPickler:
    # one per process: its per-length templates are reused by every unit the worker runs
    return TorchPickler()


class MdsUnitWriter:
    """Encode a unit's Arrow batches (in order) into `<out>/<split>/<sub_dir>/`; `finish` publishes it."""

    def __init__(self, unit: MdsUnit, ctx: MdsContext) -> None:
        self.unit, self.ctx = unit, ctx
        self.dir = ctx.out.local_dir / unit.split / unit.sub_dir
        if self.dir.exists():  # leftovers of an interrupted attempt, inside a root claimed before any unit ran
            if not is_owned(ctx.out.local_dir):
                raise InputError(f"{self.dir}: exists in an MDS root cellcorpus did not create; left untouched")
            shutil.rmtree(self.dir)
        self.dir.mkdir(parents=True)
        self._pickler = _pickler() if any(e == "pkl" for _, e in ctx.spec.columns) else None
        self._writer = ShardWriter(self.dir, ctx.spec)
        self._n_in = 0

    def add(self, table: pa.Table) -> None:
        """Encode rows (after `min_length`) in batches of BATCH_ROWS."""
        self._n_in += table.num_rows
        if self.ctx.min_length:
            if self.ctx.tokens not in table.column_names:
                raise InputError(f"{self.unit.path}: mds.min_length needs a '{self.ctx.tokens}' column")
            lengths = pc.list_value_length(table.column(self.ctx.tokens))
            table = table.filter(pc.greater_equal(lengths, self.ctx.min_length))
        for start in range(0, table.num_rows, BATCH_ROWS):
            try:
                self._writer.add(encode_samples(table.slice(start, BATCH_ROWS), self.ctx.spec, self._pickler))
            except ValueError as exc:
                raise InputError(f"{self.unit.path}: {exc}") from exc

    def close(self) -> None:
        """Last shard and index.json (written last: a writer folder with one is whole); nothing published."""
        self._writer.finish()

    def finish(self, checksum: str) -> UnitResult:
        """Close, publish, and return the unit's completion record."""
        self.close()
        return publish_unit(self.unit, self.ctx, self._n_in, checksum)


def publish_unit(unit: MdsUnit, ctx: MdsContext, n_in: int, checksum: str) -> UnitResult:
    """Publish a closed writer folder (shards, then index.json) and return its completion record.

    `n_in`: cells of the unit's Arrow file (before min_length); `checksum`: that file's xxh64.
    """
    directory = ctx.out.local_dir / unit.split / unit.sub_dir
    index = json.loads((directory / "index.json").read_text())
    for shard in index["shards"]:
        ctx.out.publish(directory / (shard["zip_data"] or shard["raw_data"])["basename"])
    ctx.out.publish(directory / "index.json")
    keep = ("samples", "zip_data", "raw_data")
    shards = [{"sub_dir": unit.sub_dir, **{k: s[k] for k in keep}} for s in index["shards"]]
    written = sum(s["samples"] for s in index["shards"])
    counts = {"cells_in": n_in, "dropped_min_length": n_in - written, "written": written}
    extra = {"split": unit.split, "sub_dir": unit.sub_dir, "input_checksum": checksum}
    return UnitResult(unit.unit_id, counts, shards, extra)


@dataclass(frozen=True)
class MdsIdentity:
    """Where an MDS export goes and what makes it the same work (settings; + the source for the stage)."""

    out: Publisher
    markers: tuple[str, ...]
    settings_hash: str
    ledger_dir: str
    settings: dict[str, Any] = field(default_factory=dict)  # recorded (with `source`): a refusal names changes
    key: ClassVar[str] = "mds.out_root"  # the config key named when a finished export is refused
    what: ClassVar[str] = "MDS export"

    def stage_hash(self, source_hash: str | None) -> str:
        """Settings + the tokenize run it exports (the source manifest's config_hash)."""
        return config_hash(self.settings_hash, source_hash)

    def ledger(self) -> Ledger:
        """The MDS completion records (one per writer sub-folder)."""
        return Ledger(self.ledger_dir, self.settings_hash)

    def decide(self, source_hash: str | None, appending: bool = False) -> MdsManifest | None:
        """The mds stage's skip / refuse / rebuild decision for an export of `source_hash` (stages.base);
        `appending`: the source grew by an append (the data files it recorded are not converted again)."""
        return decide_rerun(
            self.out,
            list(self.markers),
            key=self.key,
            what=self.what,
            stage_hash=self.stage_hash(source_hash),
            settings_hash=self.settings_hash,
            ledger=self.ledger(),
            model=MdsManifest,
            settings=self.settings,
            appending=appending,
        )


def mds_identity(plan: Plan) -> MdsIdentity:
    """Where things are never enters the identity (a moved export is still complete), the settings do.

    The settings recorded in the manifest (and named in a refusal) hold `source`, the folder exported; values
    from the environment are recorded as their references."""
    cfg = plan.cfg
    mds: MdsConfig = cfg.need("mds")
    settings = mds.model_dump(mode="json", exclude=set(MDS_LOCATION_KEYS))
    return MdsIdentity(
        out=plan.layout.mds or mds_publisher(mds),
        markers=tuple(f"{s}/index.json" for s in mds.splits),
        settings_hash=config_hash(settings),
        ledger_dir=str(plan.layout.mds_units),
        settings={
            **cfg.settings_for_output("mds", settings),
            "source": cfg.for_output("mds.root_dir", mds.root_dir),
        },
    )


def mds_context(mds: MdsConfig, out: Publisher, hf: HuggingfaceConfig | None) -> MdsContext:
    """What every unit writing `mds`'s export into `out` shares (the writer spec is validated here); min_length
    counts the tokens of `hf`'s encoding (the Tahoe-x1 `genes` of a dataset made elsewhere)."""
    spec = MdsSpec.create(mds.columns, mds.compression, mds.hashes, mds.size_limit)
    return MdsContext(spec, out, mds.min_length, produced_columns(hf)[0] if hf is not None else "genes")


def sub_dir_of(index: int) -> str:
    """The writer sub-folder of a split's `index`-th Arrow data file."""
    return f"{index:05d}"


def unit_id_of(split: str, index: int) -> str:
    """The MDS unit id of a split's `index`-th Arrow data file."""
    return f"{split}-{index:05d}"


def convert_file(unit: MdsUnit, ctx: MdsContext, table: pa.Table) -> UnitResult:
    """A whole Arrow file through one writer (the `cellcorpus mds` unit)."""
    writer = MdsUnitWriter(unit, ctx)
    writer.add(table)
    return writer.finish(unit.checksum)


@dataclass(frozen=True)
class FusedMds:
    """The MDS export written alongside the Arrow data files (splits in `splits`), a `stages.base.FusedExport`:
    by the shuffle units, or, unshuffled, by the tokenize units into a scratch folder per unit, adopted when the
    part becomes a data file."""

    identity: MdsIdentity
    context: MdsContext
    splits: tuple[str, ...]

    def scratch_ok(self, split: str) -> bool:
        """Whether tokenize units write `split`'s MDS into scratch: a local export only (finalize adopts the
        scratch folders where it runs; with an object-store export they would sit in a worker's staging)."""
        return split in self.splits and not self.identity.out.remote

    @property
    def scratch_name(self) -> str:
        """The split's scratch folder for unshuffled units' writers (named by the settings it was written with)."""
        return f".fused-{self.identity.settings_hash[:16]}"

    def scratch_writer(self, split: str, unit_id: str, part: str, n_cells: int) -> MdsUnitWriter:
        """A writer for a tokenize unit's part, in `<split>/<scratch_name>/<unit_id>/`."""
        unit = MdsUnit(f"{split}-{unit_id}", part, split, f"{self.scratch_name}/{unit_id}", n_cells)
        return MdsUnitWriter(unit, self.context)

    def clear_stale(self) -> None:
        """Scratch folders of other settings (an interrupted run of another config) are removed."""
        for split in self.splits:
            for d in (self.identity.out.local_dir / split).glob(".fused-*"):
                if d.name != self.scratch_name:
                    shutil.rmtree(d, ignore_errors=True)

    def adopt(self, split: str, unit_id: str, index: int, target: Path, record: dict) -> None:
        """Make a unit's scratch writer the split's `index`-th writer folder and record it as the mds unit
        for `target` (the data file its part became); absent scratch = the mds stage converts the file."""
        split_dir = self.identity.out.local_dir / split
        scratch = split_dir / self.scratch_name / unit_id
        if not (scratch / "index.json").exists():
            return
        unit = MdsUnit(unit_id_of(split, index), str(target), split, sub_dir_of(index), record["n_cells"])
        shutil.rmtree(split_dir / unit.sub_dir, ignore_errors=True)
        os.replace(scratch, split_dir / unit.sub_dir)
        self.identity.ledger().record(publish_unit(unit, self.context, record["n_cells"], record["xxh64"]))

    def bucket_writer(self, split: str, index: int, path: str, n_cells: int) -> _RecordingWriter:
        """A writer for the split's `index`-th data file (a shuffle bucket's), recorded as the mds unit for it."""
        unit = MdsUnit(unit_id_of(split, index), path, split, sub_dir_of(index), n_cells)
        return _RecordingWriter(MdsUnitWriter(unit, self.context), self.identity)

    def discard(self, split: str, unit_id: str) -> None:
        """A unit's scratch writer is not adopted (its part was written again, without some cells): the mds stage
        converts the data file it became."""
        shutil.rmtree(self.identity.out.local_dir / split / self.scratch_name / unit_id, ignore_errors=True)

    def clear_scratch(self, split: str) -> None:
        """The split's scratch folder, once every part was adopted (empty parts leave theirs)."""
        shutil.rmtree(self.identity.out.local_dir / split / self.scratch_name, ignore_errors=True)


class _RecordingWriter:
    """An MDS unit's writer that records its unit when its data file is complete."""

    def __init__(self, writer: MdsUnitWriter, identity: MdsIdentity) -> None:
        self._writer, self._identity = writer, identity
        self.add = writer.add

    def finish(self, checksum: str) -> None:
        """Finish the shards and record the unit (the mds stage then finds it done)."""
        self._identity.ledger().record(self._writer.finish(checksum))


def fused_export(plan: Plan, stage_hash: str) -> FusedMds | None:
    """The MDS export to write in the Arrow pass of tokenize run `stage_hash`, when the plan's `mds` exports
    exactly that output. Decided like the mds stage's own run (so a finished export of other settings is refused
    here, before any work): None when there is no mds section, it reads another dataset, or the export is
    already complete for this tokenize run."""
    mds, hf = plan.cfg.mds, plan.cfg.huggingface
    if mds is None or hf is None or not same_location(mds.root_dir, hf.merged_dataset_root):
        return None
    ident = mds_identity(plan)
    if ident.decide(stage_hash, plan.append) is not None:
        return None
    return FusedMds(ident, mds_context(mds, ident.out, hf), tuple(mds.splits))
