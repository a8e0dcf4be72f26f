"""`cellcorpus stats`: per-gene statistics of a config's inputs, in one resumable pass over them.

The main product is each vocabulary gene's median of non-zero normalised expression (count / the cell's
total x `target_sum`), which Geneformer divides by, over the whole corpus (`gene_median.pkl` in its own
dictionary format, and `stats.parquet`, which `huggingface.geneformer.gene_median` can name too). Beside it:
per gene, the cells where it is non-zero and its total count (and mean per cell); per input, cells and counts;
the genes per cell. A unit ((file, row range) of `stats.unit_cells` rows) writes its per-gene sketch
(`core/gene_sketch.py`) and sums; the merge adds counts, so the result is the same whatever `--num-proc`
and the unit size. Every cell of every input is counted (the config's cell filters are tokenize's).
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cellcorpus.config import STATS_LOCATION_KEYS, Config, HuggingfaceConfig, StatsConfig, config_hash
from cellcorpus.core.gene_sketch import GeneCounts
from cellcorpus.core.genemap import merge_duplicate_tokens
from cellcorpus.core.sketch import ValueCounts
from cellcorpus.core.tokenize import scan_counts, tokenize_csr
from cellcorpus.core.vocab import VocabLookup
from cellcorpus.errors import InputError
from cellcorpus.exec.runner import ExecutorSpec, Reporter
from cellcorpus.io.atomic import atomic_path, write_json_atomic
from cellcorpus.io.paths import Publisher
from cellcorpus.io.vocab import load_vocab, vocab_lookup
from cellcorpus.manifest import Ledger, StatsManifest, UnitResult, file_checksum, output_record
from cellcorpus.plan import Plan, plan_for
from cellcorpus.sources.inputs import discover_and_inspect, gene_mapping, input_format
from cellcorpus.stages.base import (
    StageRun,
    StageSummary,
    WorkUnit,
    locked,
    row_units,
    run_stage,
    warm_up_unless_complete,
)

if TYPE_CHECKING:
    from cellcorpus.core.cell_kernels import CellSums  # (compiled module: not imported where nothing counts)

__all__ = ["run_stats", "stats_unit", "StatsContext", "STATS_FILES"]

log = logging.getLogger(__name__)

STATS_FILES = ("stats.parquet", "gene_median.pkl", "stats.json")
_BLOCK = 16_384  # rows read and counted at a time (~32M entries of ~2,000-gene cells: the read arrays and a
# 4-byte word per value, ~0.4 GB; larger blocks visit each slice of the count table fewer times)


@dataclass(frozen=True)
class StatsContext:
    """What every unit shares (small and picklable)."""

    hf: HuggingfaceConfig
    vocab_file: str
    parts: str  # folder of the units' sketches
    target_sum: int
    relative_accuracy: float
    n_counts_column: str | None  # obs column of each cell's total, used where a file has it
    block_cells: int  # rows read at a time within a unit


def _gene_map(hf: HuggingfaceConfig, var_ids: np.ndarray, lookup: VocabLookup) -> tuple[np.ndarray, bool]:
    """Each file column's vocabulary id (-1: none), and whether two columns share one (then summed per cell)."""
    if hf.gene_id_map is None:
        gene_map = lookup.map_genes(var_ids)
        known = gene_map[gene_map >= 0]
        return gene_map, len(np.unique(known)) != len(known)
    mapping = gene_mapping(hf, var_ids, lookup)
    return mapping.gene_map, mapping.n_colliding > 0


def _count_block(
    unit: WorkUnit, start: int, stop: int, ctx: StatsContext, lookup: VocabLookup, sketch: GeneCounts,
    mapped: tuple[np.ndarray, bool] | None,
) -> tuple[tuple[np.ndarray, bool], CellSums]:  # fmt: skip
    """Rows start..stop of a unit counted into `sketch`: (the file's gene map, the rows' sums). The rows and their
    (gene, bucket) pairs (~0.4 GB for 16k cells of ~2,000 genes) are freed on return, before the next rows are
    read."""
    from cellcorpus.core.cell_kernels import count_cells  # (compiled: loaded where used)

    hf, gamma, size = ctx.hf, sketch.sparse.gamma, sketch.n_genes
    block = input_format(hf).read_block(unit.path, start, stop, hf)
    mapped = mapped or _gene_map(hf, block.var_ids, lookup)  # one file: the same columns in every block
    gene_map, collide = mapped
    indptr = np.asarray(block.indptr, dtype=np.int64)
    if block.data.dtype.kind not in "biuf":
        raise InputError(f"{unit.path} rows {start}-{stop}: {scan_counts(block.data).problem}")
    given = block.obs.get(ctx.n_counts_column) if ctx.n_counts_column else None
    n_counts = None if given is None else np.asarray(given, dtype=np.float64)
    # genes that share a vocabulary id are summed per cell first: this pass only sums (no column maps)
    spread = np.full(len(gene_map), -1, np.int64) if collide else gene_map
    sums, grouped = count_cells(indptr, block.indices, block.data, len(gene_map), spread, ctx.target_sum,
                                gamma, n_counts)  # fmt: skip
    if sums.bad_column_cell >= 0:
        raise InputError(f"{unit.path} rows {start}-{stop}: a stored column index is outside the file's "
                         f"{len(gene_map):,} genes")  # fmt: skip
    if grouped is None:  # negative or NaN/infinite counts: described as tokenize describes them
        raise InputError(f"{unit.path} rows {start}-{stop}: {scan_counts(block.data).problem}")
    if collide:
        cells = tokenize_csr(indptr, block.indices, block.data, gene_map, None, 0, sums.n_zero, np.float64)
        offsets, genes, values, _ = merge_duplicate_tokens(cells.offsets, cells.genes, cells.expressions)
        scale = sums.totals if n_counts is None else n_counts
        _, grouped = count_cells(offsets, genes, values, size, np.arange(size), ctx.target_sum, gamma, scale)
        assert grouped is not None
    sketch.add_grouped(grouped)
    return mapped, sums


def stats_unit(unit: WorkUnit, ctx: StatsContext) -> UnitResult:
    """One unit's per-gene sketch and sums, written to `parts/<unit>.npz`; its rows are read `block_cells` at a
    time (bounded memory) and counted into one table as they come."""
    lookup = vocab_lookup(ctx.vocab_file)  # once per process: gene_id_map's table is cached with it
    size = max(lookup.vocab.values(), default=-1) + 1
    sketch = GeneCounts(size, ctx.relative_accuracy)
    column_totals, per_cell, counts = None, ValueCounts(), 0.0
    mapped: tuple[np.ndarray, bool] | None = None
    for start in range(unit.row_start, unit.row_stop, ctx.block_cells):
        stop = min(start + ctx.block_cells, unit.row_stop)
        mapped, sums = _count_block(unit, start, stop, ctx, lookup, sketch, mapped)
        column_totals = sums.column_totals if column_totals is None else column_totals + sums.column_totals
        per_cell = per_cell.merge(ValueCounts.of(sums.n_genes.astype(np.float64)))
        counts += float(sums.totals.sum())
    packed = sketch.packed()
    totals = np.zeros(size)
    if mapped is not None and column_totals is not None:
        known = mapped[0] >= 0
        totals = np.bincount(mapped[0][known], weights=column_totals[known], minlength=size)
    path = Path(ctx.parts) / f"{unit.unit_id}.npz"
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(
            f,
            **packed,
            totals=totals,
            genes_per_cell=np.stack([per_cell.values, per_cell.counts.astype(np.float64)]),
        )
    extra = {"file_index": unit.file_index, "input_checksum": unit.checksum, "counts": counts}
    return UnitResult(unit.unit_id, {"cells": unit.n_cells}, [output_record(path, ctx.parts)], extra)


def _settings(hf: HuggingfaceConfig, st: StatsConfig, n_counts_column: str | None) -> dict[str, Any]:
    """What decides the statistics' values (locations excluded; the vocabulary and gene map by content)."""
    settings = st.model_dump(mode="json", exclude=set(STATS_LOCATION_KEYS))
    gene_map = hf.gene_id_map.model_dump(mode="json") if hf.gene_id_map else None
    if gene_map:
        gene_map["path"] = file_checksum(gene_map["path"])
    return {
        **settings,
        "vocabulary": file_checksum(hf.vocab_file),
        "gene_col": hf.gene_col,
        "counts_layer": hf.counts_layer,
        "input_format": hf.input_format,
        "gene_table": file_checksum(hf.parquet_gene_table) if hf.parquet_gene_table else None,
        "gene_id_map": gene_map,
        "n_counts_column": n_counts_column,
    }


class _UnitMerge:
    """The units' count tables added into one dense table (`GeneCounts`), each as its unit finishes: the parent
    reads and adds one file (~25 ms) while the workers count, instead of all of them after the last. Counts are
    integers, so the sum is the same in any order. A count is at most the number of cells, so 32-bit counts hold
    it below 2^32 cells (half the memory traffic of 64-bit ones: the adds are memory-bound)."""

    def __init__(self, parts: Path, n_cells: int, accuracy: float, size: int) -> None:
        self.parts = parts
        wide = n_cells >= 1 << 32
        self.table = GeneCounts(size, accuracy, dtype=np.uint64 if wide else np.uint32)
        self.merged: set[str] = set()

    def add(self, unit: WorkUnit, result: UnitResult) -> UnitResult:
        """Count in one finished unit's table (`StageRun.keep`)."""
        with np.load(self.parts / f"{unit.unit_id}.npz") as z:
            self.table.add_packed(z)
        self.merged.add(unit.unit_id)
        return result

    def finish(self, units: Sequence[WorkUnit]) -> tuple[GeneCounts, Any, Any]:
        """The table with the units of an earlier run added too; the per-gene and per-cell sums, added in unit
        order (floating-point sums: the same order every run)."""
        totals = np.zeros(self.table.n_genes)
        per_cell = ValueCounts()
        for u in units:
            with np.load(self.parts / f"{u.unit_id}.npz") as z:
                if u.unit_id not in self.merged:
                    self.table.add_packed(z)
                    self.merged.add(u.unit_id)
                totals += z["totals"]
                values, counts = z["genes_per_cell"]
                per_cell = per_cell.merge(ValueCounts(values, counts.astype(np.int64), float(values @ counts)))
        return self.table, totals, per_cell


@locked("stats")
def run_stats(cfg: Config | Plan, spec: ExecutorSpec | None = None, reporter: Reporter | None = None) -> StageSummary:
    """Compute the statistics (skipped when the output is complete for these inputs and settings)."""
    plan = plan_for(cfg, "stats", spec)  # (`locked` resolved it: this is that plan)
    cfg, layout, spec = plan.cfg, plan.layout, plan.executor
    hf, st = cfg.need("huggingface"), cfg.need("stats")
    out = Publisher(st.output_root, staging=".")
    root = out.local_dir
    kernels = ("cellcorpus.stages.stats", "cellcorpus.core.cell_kernels:load_kernels")  # (by name: not loaded here)
    warm_up_unless_complete(spec, root, STATS_FILES, kernels)
    vocab = load_vocab(hf.vocab_file)
    inputs, _ = discover_and_inspect(hf, vocab, layout.decompressed)
    n_counts_column = hf.geneformer.n_counts_column if hf.geneformer else "n_counts"
    settings = _settings(hf, st, n_counts_column)
    stage_hash = config_hash(settings, [(f.rel_path, f.n_bytes, f.checksum) for f in inputs])
    parts = root / "parts"
    ctx = StatsContext(
        hf, hf.vocab_file, str(parts), st.target_sum, st.relative_accuracy, n_counts_column, min(hf.unit_cells, _BLOCK)
    )
    size = max(vocab.values(), default=-1) + 1
    outputs = {name: str(root / name) for name in STATS_FILES}

    merge = _UnitMerge(parts, sum(f.n_obs for f in inputs), st.relative_accuracy, size)

    def plan_units() -> list[WorkUnit]:
        parts.mkdir(parents=True, exist_ok=True)
        return row_units(inputs, st.unit_cells)

    def finalize(units: Sequence[WorkUnit], results: list[UnitResult]) -> tuple[dict[str, Any], StageSummary]:
        table, totals, per_cell = merge.finish(units)
        genes, n, medians = table.medians()  # (n: each gene's values counted, its non-zero cells)
        nonzero = np.zeros(size, np.int64)
        nonzero[genes] = n
        names = {i: g for g, i in vocab.items()}
        n_cells = sum(r.counts["cells"] for r in results)
        seen = np.flatnonzero(nonzero > 0)
        median_of = dict(zip(genes.tolist(), medians.tolist(), strict=True))
        table = pa.table(
            {
                "gene_id": [names.get(int(i), str(i)) for i in seen],
                "token_id": pa.array(seen, pa.int64()),
                "nonzero_cells": pa.array(nonzero[seen], pa.int64()),
                "total_counts": pa.array(totals[seen]),
                "mean_counts": pa.array(totals[seen] / max(n_cells, 1)),
                "median": pa.array([median_of.get(int(i), float("nan")) for i in seen]),
            }
        )
        with atomic_path(root / "stats.parquet") as tmp:
            pq.write_table(table, tmp)
        # Geneformer's gene_median_dictionary format: Ensembl id -> median (plain floats)
        with atomic_path(root / "gene_median.pkl") as tmp, open(tmp, "wb") as f:
            pickle.dump(
                dict(zip(table.column("gene_id").to_pylist(), table.column("median").to_pylist(), strict=True)), f
            )
        by_input: dict[int, dict[str, float]] = {}
        for r in results:
            entry = by_input.setdefault(r.extra["file_index"], {"cells": 0, "counts": 0.0})
            entry["cells"] += r.counts["cells"]
            entry["counts"] += r.extra["counts"]
        summary_json = {
            "cells": n_cells,
            "genes_seen": len(seen),
            "relative_accuracy": st.relative_accuracy,
            "target_sum": st.target_sum,
            "inputs": {inputs[fi].rel_path: v for fi, v in sorted(by_input.items())},
            "genes_per_cell": {f"q{int(q * 100):02d}": per_cell.quantile(q) for q in (0.01, 0.5, 0.99)}
            if per_cell.n
            else {},
        }
        write_json_atomic(root / "stats.json", summary_json)
        for u in units:  # merged: the units' sketches (each named by its unit's record) are no longer needed
            (parts / f"{u.unit_id}.npz").unlink(missing_ok=True)
        files = {name: file_checksum(root / name) for name in STATS_FILES}
        totals_out = {"cells": n_cells, "genes_seen": len(seen), "inputs": len(inputs)}
        records = [
            {"file_index": f.file_index, "path": f.rel_path, "bytes": f.n_bytes, "checksum": f.checksum,
             "n_obs": f.n_obs}
            for f in inputs
        ]  # fmt: skip
        body = {"inputs": records, "totals": totals_out, "files": files}
        return body, StageSummary("stats", counts=totals_out, outputs=outputs)

    stage: StageRun[StatsManifest] = StageRun(
        name="stats",
        out=out,
        markers=list(STATS_FILES),
        key="stats.output_root",
        what="statistics",
        settings_hash=config_hash(settings),
        stage_hash=stage_hash,
        manifest_model=StatsManifest,
        ledger=Ledger(root / "units", stage_hash),
        plan=plan_units,
        run_unit=stats_unit,
        context=ctx,
        finalize=finalize,
        skipped=lambda m: StageSummary("stats", skipped=True, counts=m.totals, outputs=outputs),
        cells_of=lambda u: u.n_cells,
        is_current=lambda u, r: r.extra.get("input_checksum") == u.checksum,
        settings=settings,
        keep=lambda u, r: merge.add(u, r),
    )
    return run_stage(stage, spec, reporter)
