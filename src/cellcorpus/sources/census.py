"""CELLxGENE Census download: primary cells, filtered genes, `chunk_<i>.h5ad` of `chunk_size` cells.

Cells: `is_primary_data == True and suspension_type != 'na'`, in soma_joinid order. Genes:
`n_measured_obs >= min_gene_measured_obs`, `nnz >= min_gene_nnz`, and an id in the vocabulary.
Each chunk drops the genes whose total count in that chunk is under `min_count_per_gene` (as the
seed did). Chunks are units: fetched in parallel, written atomically, skipped when present.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cellcorpus.config import CellxgeneConfig, Config, config_hash
from cellcorpus.core.vocab import strip_version
from cellcorpus.errors import InputError, MissingExtraError
from cellcorpus.exec.runner import ExecutorSpec, Reporter, run_units
from cellcorpus.io.atomic import atomic_path
from cellcorpus.io.paths import join
from cellcorpus.manifest import Ledger, UnitResult, write_manifest
from cellcorpus.stages.base import StageSummary
from cellcorpus.stages.vocab import load_vocab

__all__ = ["CensusChunk", "plan_census", "select_census", "census_chunk_unit", "run_census_download", "CELL_FILTER"]

log = logging.getLogger(__name__)

CELL_FILTER = "is_primary_data == True and suspension_type != 'na'"


def _census():
    try:
        import cellxgene_census
    except ImportError as exc:
        raise MissingExtraError(
            "Census download needs cellxgene-census", hint="pip install 'cellcorpus[census]'"
        ) from exc
    return cellxgene_census


def _open(cx: CellxgeneConfig):
    cc = _census()
    if cx.census_uri:
        return cc.open_soma(uri=cx.census_uri)
    from cellcorpus.sources.remote import check_reachable

    check_reachable("s3://cellxgene-census-public-us-west-2")
    return cc.open_soma(census_version=cx.version)


def _organism_key(organism: str) -> str:
    return organism.lower().replace(" ", "_")


@dataclass(frozen=True, order=True)
class CensusChunk:
    """One chunk: its cells are a slice (a view, no copy) of the selected id array; pickled, only the slice goes.

    Arrays rather than tuples: a 60M-cell plan of Python ints took ~2 GB; as int64 views it is the id array.
    """

    unit_id: str
    path: str  # the chunk file written (named in errors)
    obs_ids: np.ndarray = field(compare=False, repr=False)
    var_ids: np.ndarray = field(compare=False, repr=False)
    min_count_per_gene: int = 0

    @property
    def n_cells(self) -> int:
        return len(self.obs_ids)


def plan_census(
    obs_ids: np.ndarray, var_ids: np.ndarray, chunk_size: int, out: Path, min_count: int
) -> list[CensusChunk]:
    """`chunk_<i>.h5ad` units of `chunk_size` cells in soma_joinid order (views into `obs_ids`)."""
    obs_ids = np.ascontiguousarray(obs_ids, dtype=np.int64)
    var_ids = np.ascontiguousarray(var_ids, dtype=np.int64)
    return [
        CensusChunk(f"chunk_{i:05d}", str(out / f"chunk_{i}.h5ad"), obs_ids[s : s + chunk_size], var_ids, min_count)
        for i, s in enumerate(range(0, len(obs_ids), chunk_size))
    ]


def select_census(cx: CellxgeneConfig, vocab: dict[str, int]) -> tuple[np.ndarray, np.ndarray]:
    """(obs soma_joinids, var soma_joinids) selected, both ascending."""
    with _open(cx) as census:
        exp = census["census_data"][_organism_key(cx.organism)]
        obs = exp.obs.read(value_filter=CELL_FILTER, column_names=["soma_joinid"]).concat()
        obs_ids = np.sort(obs.column("soma_joinid").to_numpy())
        var = (
            exp.ms["RNA"]
            .var.read(column_names=["soma_joinid", cx.use_col, "nnz", "n_measured_obs"])
            .concat()
            .to_pandas()
        )
    keep = (var["n_measured_obs"] >= cx.min_gene_measured_obs) & (var["nnz"] >= cx.min_gene_nnz)
    keep &= np.isin(strip_version(var[cx.use_col].to_numpy()), np.array(list(vocab), dtype=object))
    return obs_ids, np.sort(var.loc[keep, "soma_joinid"].to_numpy())


def census_chunk_unit(unit: CensusChunk, cx: CellxgeneConfig) -> UnitResult:
    """Fetch one chunk's raw counts, drop genes under min_count_per_gene, write chunk_<i>.h5ad atomically."""
    cc = _census()
    with _open(cx) as census:
        adata = cc.get_anndata(
            census,
            organism=cx.organism,
            measurement_name="RNA",
            X_name="raw",
            obs_coords=np.array(unit.obs_ids, dtype=np.int64),
            var_coords=np.array(unit.var_ids, dtype=np.int64),
        )
    totals = np.asarray(adata.X.sum(axis=0)).ravel()
    keep = totals >= unit.min_count_per_gene
    adata = adata[:, keep].copy()
    with atomic_path(unit.path) as tmp:
        adata.write_h5ad(tmp.with_suffix(".h5ad"))
        tmp.with_suffix(".h5ad").rename(tmp)
    counts = {"cells": adata.n_obs, "genes": int(keep.sum()), "genes_dropped_min_count": int((~keep).sum())}
    return UnitResult(unit.unit_id, counts, [{"path": Path(unit.path).name}])


def run_census_download(cfg: Config, spec: ExecutorSpec, reporter: Reporter | None = None) -> StageSummary:
    cx: CellxgeneConfig = cfg.need("cellxgene")
    vocab_file = join(cfg.vocab.output_root, cx.vocab) if (cfg.vocab and cx.vocab) else cfg.need("vocab").vocab_file
    vocab = load_vocab(vocab_file)
    obs_ids, var_ids = select_census(cx, vocab)
    if len(obs_ids) == 0 or len(var_ids) == 0:
        raise InputError(f"Census selection is empty: {len(obs_ids)} cells, {len(var_ids)} genes")
    log.warning("Census %s: %d cells and %d genes selected", cx.census_uri or cx.version, len(obs_ids), len(var_ids))
    out = Path(cx.output_root)
    units = plan_census(obs_ids, var_ids, cx.chunk_size, out, cx.min_count_per_gene)
    work = config_hash(cx.model_dump(mode="json", exclude={"num_proc"}), len(obs_ids), len(var_ids))
    ledger = Ledger(out / ".units" / "download", work)
    done = run_units(
        census_chunk_unit, units, cx, ledger, spec,
        description=f"download cellxgene ({len(obs_ids):,} cells, {len(var_ids):,} genes)",
        cells_of=lambda u: u.n_cells, reporter=reporter,
        is_current=lambda u, r: Path(u.path).is_file(),
    )  # fmt: skip
    write_manifest(
        out / "download_manifest.json",
        stage="download-cellxgene",
        config_hash=work,
        census=cx.census_uri or cx.version,
        chunks=[{"file": Path(u.path).name, **done[u.unit_id].counts} for u in units],
    )
    return StageSummary(
        "download cellxgene",
        counts={"cells selected": len(obs_ids), "genes selected": len(var_ids), "chunks": len(units)},
        outputs={"folder": str(out)},
    )
