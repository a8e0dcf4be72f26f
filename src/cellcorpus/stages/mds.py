"""`cellcorpus mds`: HF Arrow splits -> MDS shards, one writer sub-folder per Arrow data file.

A unit converts one data file (memory-mapped, in row batches) into `<out_root>/<split>/<i:05d>/`
with its own index.json; finalize merges them into `<out_root>/<split>/index.json`, written last,
so a split is readable (and counted complete) only when every writer finished.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from cellcorpus.config import MDS_LOCATION_KEYS, Config, MdsConfig, config_hash
from cellcorpus.errors import ConfigError, InputError
from cellcorpus.exec.runner import ExecutorSpec, Reporter
from cellcorpus.formats.arrow import read_arrow
from cellcorpus.formats.mds import MdsSpec, ShardWriter, TorchPickler, encode_samples, merge_split_index
from cellcorpus.io.paths import Publisher, local_copy
from cellcorpus.layout import mds_publisher, mds_units_dir
from cellcorpus.manifest import Ledger, MdsManifest, TokenizeManifest, UnitResult
from cellcorpus.stages.base import StageRun, StageSummary, run_stage
from cellcorpus.stages.preflight import preflight

__all__ = ["MdsUnit", "MdsContext", "plan_mds", "mds_unit", "run_mds", "BATCH_ROWS"]

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
    """What every MDS unit shares: writer spec, output root, min_length."""

    spec: MdsSpec
    out: Publisher
    min_length: int | None


def plan_mds(mds: MdsConfig) -> list[MdsUnit]:
    """One unit per Arrow data file of every split, in split then file order (sizes from the manifest)."""
    src = Publisher(mds.root_dir, staging=".")
    manifest = src.read_manifest("manifest.json", TokenizeManifest)
    units = []
    for split in mds.splits:
        state = src.read_json(f"{split}.dataset/state.json")
        if state is None:
            raise ConfigError(
                f"mds.root_dir: no complete dataset for split '{split}' at {src.url(f'{split}.dataset')}",
                hint="run `cellcorpus tokenize` first",
            )
        records = {r.path: r for r in manifest.splits.get(split, [])} if manifest else {}
        for i, f in enumerate(state["_data_files"]):
            path = src.url(f"{split}.dataset/{f['filename']}")
            rec = records.get(f["filename"])
            n = rec.n_cells if rec else read_arrow(path).num_rows
            units.append(MdsUnit(f"{split}-{i:05d}", path, split, f"{i:05d}", n, rec.xxh64 if rec else ""))
    return units


def mds_unit(unit: MdsUnit, ctx: MdsContext) -> UnitResult:
    """Convert one Arrow file into MDS shards + a writer index.json in its own sub-folder."""
    out = ctx.out.local_dir / unit.split / unit.sub_dir
    shutil.rmtree(out, ignore_errors=True)  # leftovers of an interrupted attempt
    out.mkdir(parents=True)
    with local_copy(unit.path) as local:
        return _convert(unit, ctx, read_arrow(local), out)


def _convert(unit: MdsUnit, ctx: MdsContext, table: pa.Table, out: Path) -> UnitResult:
    n_in = table.num_rows
    if ctx.min_length:
        if "genes" not in table.column_names:
            raise InputError(f"{unit.path}: mds.min_length needs a 'genes' column")
        table = table.filter(pc.greater_equal(pc.list_value_length(table.column("genes")), ctx.min_length))
    pickler = TorchPickler() if any(e == "pkl" for _, e in ctx.spec.columns) else None
    writer = ShardWriter(out, ctx.spec)
    for start in range(0, table.num_rows, BATCH_ROWS):
        batch = table.slice(start, BATCH_ROWS)
        try:
            writer.add(encode_samples(batch, ctx.spec, pickler))
        except ValueError as exc:
            raise InputError(f"{unit.path}: {exc}") from exc
    index = writer.finish()
    for shard in index["shards"]:
        ctx.out.publish(out / (shard["zip_data"] or shard["raw_data"])["basename"])
    ctx.out.publish(out / "index.json")  # after its shards
    shards = [
        {"sub_dir": unit.sub_dir, "samples": s["samples"], "zip_data": s["zip_data"], "raw_data": s["raw_data"]}
        for s in index["shards"]
    ]
    counts = {"cells_in": n_in, "dropped_min_length": n_in - table.num_rows, "written": writer.n_samples}
    return UnitResult(unit.unit_id, counts, shards, {"split": unit.split, "input_checksum": unit.checksum})


def run_mds(cfg: Config, spec: ExecutorSpec | None = None, reporter: Reporter | None = None) -> StageSummary:
    """Export every split to MDS; skips when the merged indexes already match this config + input."""
    mds: MdsConfig = cfg.need("mds")
    spec = spec or ExecutorSpec.resolve(cfg, mds.num_proc)
    notes = preflight(cfg, spec, "mds")
    wspec = MdsSpec.create(mds.columns, mds.compression, mds.hashes, mds.size_limit)
    source = Publisher(mds.root_dir, staging=".")
    source_manifest = source.read_manifest("manifest.json", TokenizeManifest)
    # Where things are never enters the identity (a moved export is still complete), the source's does.
    settings_hash = config_hash(mds.model_dump(mode="json", exclude=set(MDS_LOCATION_KEYS)))
    stage_hash = config_hash(settings_hash, source_manifest.config_hash if source_manifest else None)
    out = mds_publisher(mds)
    outputs = {s: out.url(s) for s in mds.splits}

    def finalize(units: Sequence[MdsUnit], results: list[UnitResult]) -> tuple[dict[str, Any], StageSummary]:
        done = {r.unit_id: r for r in results}
        for split in mds.splits:  # an empty split is an error, found before any merged index is written
            res = [done[u.unit_id] for u in units if u.split == split]
            if sum(r.counts["written"] for r in res) == 0:
                n_in = sum(r.counts["cells_in"] for r in res)
                raise InputError(
                    f"mds: the {split} split would have 0 samples ({n_in:,} cells in the Arrow split, "
                    f"{sum(r.counts['dropped_min_length'] for r in res):,} shorter than mds.min_length)",
                    hint="lower mds.min_length, or remove the split from mds.splits",
                )
        totals: dict[str, int] = {}
        splits = {}
        for split in mds.splits:
            sunits = [u for u in units if u.split == split]
            subs = [u.sub_dir for u in sunits]
            indexes = [out.read_json(f"{split}/{d}/index.json") for d in subs]
            n = merge_split_index(out.local_dir / split, subs, indexes)
            out.publish(out.local_dir / split / "index.json")  # last in the split: now it is readable
            res = [done[u.unit_id] for u in sunits]
            splits[split] = {
                "samples": n,
                "cells_in": sum(r.counts["cells_in"] for r in res),
                "dropped_min_length": sum(r.counts["dropped_min_length"] for r in res),
                "shards": [o for r in res for o in r.outputs],
            }
            totals[f"{split}_written"] = n
            totals[f"{split}_dropped_min_length"] = splits[split]["dropped_min_length"]
        body = {
            "source_manifest": source.url("manifest.json"),
            "columns": dict(wspec.columns),
            "splits": splits,
            "totals": totals,
        }
        return body, StageSummary("mds", counts=totals, outputs=outputs, notes=notes)

    stage: StageRun[MdsManifest] = StageRun(
        name="mds",
        out=out,
        markers=[f"{s}/index.json" for s in mds.splits],
        key="mds.out_root",
        what="MDS export",
        settings_hash=settings_hash,
        stage_hash=stage_hash,
        manifest_model=MdsManifest,
        ledger=Ledger(mds_units_dir(mds), settings_hash),
        plan=lambda: plan_mds(mds),
        run_unit=mds_unit,
        context=MdsContext(wspec, out, mds.min_length),
        finalize=finalize,
        skipped=lambda m: StageSummary("mds", skipped=True, counts=m.totals, outputs=outputs, notes=notes),
        cells_of=lambda u: u.n_cells,
        is_current=lambda u, r: r.extra.get("input_checksum") == u.checksum,
    )
    return run_stage(stage, spec, reporter)
