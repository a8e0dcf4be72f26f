"""`cellcorpus mds`: HF Arrow splits -> MDS shards, one writer sub-folder per Arrow data file (stages/mds_unit.py).

A unit converts one data file (memory-mapped, in row batches) into `<out_root>/<split>/<i:05d>/`
with its own index.json; finalize merges them into `<out_root>/<split>/index.json`, written last,
so a split is readable (and counted complete) only when every writer finished.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from typing import Any

from cellcorpus.config import Config, MdsConfig
from cellcorpus.errors import ConfigError, InputError
from cellcorpus.exec.runner import ExecutorSpec, Reporter
from cellcorpus.formats.arrow import read_arrow
from cellcorpus.formats.mds import merge_split_index
from cellcorpus.io.atomic import remove_temporaries
from cellcorpus.io.paths import Publisher, join, local_copy
from cellcorpus.layout import MANIFEST
from cellcorpus.manifest import Ledger, MdsManifest, TokenizeManifest, UnitResult, read_manifest
from cellcorpus.plan import Plan, plan_for
from cellcorpus.stages.base import StageRun, StageSummary, locked, run_stage
from cellcorpus.stages.mds_unit import (
    MdsContext,
    MdsUnit,
    convert_file,
    mds_context,
    mds_identity,
    sub_dir_of,
    unit_id_of,
)
from cellcorpus.stages.preflight import preflight

__all__ = ["plan_mds", "mds_unit", "run_mds"]


def plan_mds(mds: MdsConfig, src: Publisher) -> list[MdsUnit]:
    """One unit per Arrow data file of every split of `src` (`mds.root_dir`), in split then file order (sizes
    from the manifest)."""
    manifest = read_manifest(src, "manifest.json", TokenizeManifest)
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
            units.append(MdsUnit(unit_id_of(split, i), path, split, sub_dir_of(i), n, rec.xxh64 if rec else ""))
    return units


def mds_unit(unit: MdsUnit, ctx: MdsContext) -> UnitResult:
    """Convert one Arrow file into MDS shards + a writer index.json in its own sub-folder."""
    with local_copy(unit.path) as local:
        return convert_file(unit, ctx, read_arrow(local))


def _remove_stale_writers(out: Publisher, ledger: Ledger, split: str, current: set[str]) -> None:
    """Writer folders a completion record of this export names that no data file of it has now (a rebuild made
    fewer of them): removed with their records, so no shard the merged index does not list stays in the split
    (verify names such files), and a unit planned again later is redone. A folder no record names is left alone."""
    for unit_id, rec in ledger.done().items():
        # the unit's folder (records of earlier versions name it only through their shards)
        named = {rec.extra["sub_dir"]} if "sub_dir" in rec.extra else {o["sub_dir"] for o in rec.outputs}
        stale = named - current
        if rec.extra.get("split") == split and stale:
            for sub in stale:
                shutil.rmtree(out.local_dir / split / sub, ignore_errors=True)
            ledger.forget(unit_id)


@locked("mds")
def run_mds(cfg: Config | Plan, spec: ExecutorSpec | None = None, reporter: Reporter | None = None) -> StageSummary:
    """Export every split to MDS; skips when the merged indexes already match this config + input."""
    plan = plan_for(cfg, "mds", spec)  # (`locked` resolved it: this is that plan)
    mds: MdsConfig = plan.cfg.need("mds")
    spec = plan.executor
    notes = preflight(plan)
    ident = mds_identity(plan)
    export = ident.out.local_dir
    for split in mds.splits:  # a killed run's half-written shards and indexes, by the names this stage writes
        for folder in (export / split, *(d for d in (export / split).glob("*") if d.is_dir())):
            for name in ("shard.*", "index.json"):
                remove_temporaries(folder, name)
    remove_temporaries(export, MANIFEST)
    source = plan.layout.mds_source or Publisher(mds.root_dir, staging=".")
    source_manifest = read_manifest(source, "manifest.json", TokenizeManifest)
    stage_hash = ident.stage_hash(source_manifest.config_hash if source_manifest else None)
    out = ident.out
    context = mds_context(mds, out, plan.cfg.huggingface)
    outputs = {s: out.url(s) for s in mds.splits}

    ledger = ident.ledger()

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
            _remove_stale_writers(out, ledger, split, set(subs))
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
            "source_manifest": join(ident.settings["source"], MANIFEST),
            "columns": dict(context.spec.columns),
            "splits": splits,
            "totals": totals,
        }
        return body, StageSummary("mds", counts=totals, outputs=outputs, notes=notes)

    stage: StageRun[MdsManifest] = StageRun(
        name="mds",
        out=out,
        markers=list(ident.markers),
        key=ident.key,
        what=ident.what,
        settings_hash=ident.settings_hash,
        stage_hash=stage_hash,
        manifest_model=MdsManifest,
        ledger=ledger,
        plan=lambda: plan_mds(mds, source),
        run_unit=mds_unit,
        context=context,
        finalize=finalize,
        skipped=lambda m: StageSummary("mds", skipped=True, counts=m.totals, outputs=outputs, notes=notes),
        cells_of=lambda u: u.n_cells,
        is_current=lambda u, r: r.extra.get("input_checksum") == u.checksum,
        settings=ident.settings,
        appending=plan.append,  # data files recorded before are not converted again (their units are done)
    )
    return run_stage(stage, spec, reporter)
