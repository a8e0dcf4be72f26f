"""CELLxGENE Census as a source: primary cells, filtered genes, `chunk_<i>.h5ad` of `chunk_size` cells.

The download stage (stages/download.py) orchestrates it; this module only selects, plans and fetches.

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

from cellcorpus.config import CellxgeneConfig
from cellcorpus.core.vocab import strip_version
from cellcorpus.errors import MissingExtraError
from cellcorpus.io.atomic import atomic_path
from cellcorpus.manifest import UnitResult

__all__ = ["CensusChunk", "plan_census", "select_census", "census_chunk_unit", "CELL_FILTER"]

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
        """Cells in this chunk."""
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
