"""Synthetic three-source atlas (Tahoe-like plates, scBaseCamp-like files, Census-like chunks).

Used by `cellcorpus demo` and by the tests. Everything is seeded, so the same call writes the same
files. Counts are small integers from a seeded generator; some entries are explicit zeros and some
genes are outside the reference vocabulary, so every code path (filters, OOV drop, joins) is hit.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

__all__ = ["DemoAtlas", "make_demo_atlas", "ensembl_ids", "random_counts", "write_h5ad"]

DRUGS = ["DMSO_TF", "Bortezomib", "Trametinib", "Paclitaxel", "Ibrutinib"]
# Real SMILES (PubChem canonical forms), so the drugs stage computes real fingerprints; the table also lists
# one drug whose SMILES does not parse, which the shipped Tahoe config skips and reports.
SMILES = {
    "DMSO_TF": "CS(C)=O",
    "Bortezomib": "CC(C)C[C@H](NC(=O)[C@H](Cc1ccccc1)NC(=O)c1cnccn1)B(O)O",
    "Trametinib": "CC(=O)Nc1cccc(c1)-n1c2c(C)c(=O)n(C)c(Nc3ccc(I)cc3F)c2c(=O)n(C2CC2)c1=O",
    "Paclitaxel": "CC(=O)O[C@@H]1C(=O)[C@]2(C)[C@@H](O)C[C@H]3OC[C@@]3(OC(C)=O)[C@H]2[C@H](OC(=O)c2ccccc2)"
    "[C@]2(O)C[C@H](OC(=O)[C@H](O)[C@@H](NC(=O)c3ccccc3)c3ccccc3)C(C)=C1C2(C)C",
    "Ibrutinib": "C=CC(=O)N1CCC[C@@H](C1)n1nc(-c2ccc(Oc3ccccc3)cc2)c2c(N)ncnc21",
}
UNPARSEABLE = ("Unparseable-1", "C1CC(C")
CELL_LINES = ["CVCL_0023", "CVCL_0028", "CVCL_0062"]


def ensembl_ids(n: int, offset: int = 0) -> list[str]:
    """`n` synthetic Ensembl-style gene ids (ENSG + 11 digits), starting after `offset`."""
    return [f"ENSG{i:011d}" for i in range(offset + 1, offset + n + 1)]


def random_counts(rng: np.random.Generator, n_cells: int, n_genes: int, density: float) -> sp.csr_matrix:
    """CSR int32 counts with ~density non-zeros per row, plus a few explicit stored zeros."""
    nnz_per_row = rng.binomial(n_genes, density, size=n_cells)
    indptr = np.zeros(n_cells + 1, dtype=np.int64)
    np.cumsum(nnz_per_row, out=indptr[1:])
    indices = np.concatenate([np.sort(rng.choice(n_genes, k, replace=False)) for k in nnz_per_row]).astype(np.int32)
    data = rng.integers(1, 30, size=len(indices)).astype(np.float32)
    data[rng.random(len(data)) < 0.01] = 0  # explicit zeros are dropped by the tokenizer
    return sp.csr_matrix((data, indices, indptr), shape=(n_cells, n_genes))


def write_h5ad(path: Path, X: sp.spmatrix | np.ndarray, obs: pd.DataFrame, var: pd.DataFrame) -> Path:
    """Write an AnnData to `path` (parents created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ad.AnnData(X=X, obs=obs, var=var).write_h5ad(path)
    return path


@dataclass(frozen=True)
class DemoAtlas:
    """Where `make_demo_atlas` put each source's files and tables."""

    root: Path
    reference: Path
    tahoe_dir: Path
    scbasecamp_dir: Path
    cellxgene_dir: Path
    tables: dict[str, Path]
    genes: list[str]


def make_demo_atlas(root: str | Path, n_genes: int = 400, cells_per_file: int = 300, seed: int = 0) -> DemoAtlas:
    """Write the atlas under `root` (raw/, metadata/) and return where everything is."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    genes = ensembl_ids(n_genes)
    symbols = [f"GENE{i}" for i in range(1, n_genes + 1)]
    raw = root / "raw"
    meta = root / "metadata" / "tahoe"
    meta.mkdir(parents=True, exist_ok=True)

    # Tahoe-like plates: var index = symbol, gene_id column; the first plate is the vocab reference.
    tahoe_dir = raw / "tahoe_100m" / "h5ad"
    for plate in (13, 14):
        n = cells_per_file
        obs = pd.DataFrame(
            {
                "drug": pd.Categorical(rng.choice(DRUGS, n)),
                "sample": pd.Categorical([f"smp_{plate}_{k}" for k in rng.integers(0, 4, n)]),
                "cell_line": pd.Categorical(rng.choice(CELL_LINES + ["CVCL_UNKNOWN"], n)),
                "pass_filter": pd.Categorical(rng.choice(["full", "minimal"], n, p=[0.8, 0.2])),
            },
            index=[f"plate{plate}_cell{i:05d}" for i in range(n)],
        )
        var = pd.DataFrame({"gene_id": genes}, index=symbols)
        name = f"plate{plate}_filt_Vevo_Tahoe100M_WServicesFrom_ParseGigalab.h5ad"
        write_h5ad(tahoe_dir / name, random_counts(rng, n, n_genes, 0.1), obs, var)
    reference = tahoe_dir / "plate14_filt_Vevo_Tahoe100M_WServicesFrom_ParseGigalab.h5ad"
    # the release's gene table (token_id, ensembl_id, gene_symbol): the shipped Tahoe configs map a plate's symbols
    # through it when its var holds no gene_id column
    genes_table = raw / "tahoe_100m" / "metadata" / "gene_metadata.parquet"
    genes_table.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"token_id": range(n_genes), "ensembl_id": genes, "gene_symbol": symbols}).to_parquet(
        genes_table, index=False
    )
    sbc_dir = raw / "scbasecamp"
    tables = {
        "cell_line": meta / "cell_gen_dr_a97.csv",
        "drug": meta / "tahoe_drug_smiles.csv",
        "sample": meta / "sample_metadata.csv",
        "srx": sbc_dir / "metadata" / "sample_metadata.parquet",
    }
    pd.DataFrame({"Cell_ID_Vevo": CELL_LINES, "Cell_ID_Cellosaur": [f"{c}_cellosaurus" for c in CELL_LINES]}).to_csv(
        tables["cell_line"], index=False
    )
    pd.DataFrame(
        {
            "drug": [*DRUGS, UNPARSEABLE[0]],
            "moa-fine": ["vehicle", "proteasome", "MEK", "tubulin", "BTK", "unclear"],
            "canonical_smiles": [*(SMILES[d] for d in DRUGS), UNPARSEABLE[1]],
            "pubchem_cid": ["679", "387447", "11707110", "36314", "24821094", ""],
            "targets": ["", "PSMB5", "MAP2K1", "TUBB", "BTK", ""],
        }
    ).to_csv(tables["drug"], index=False)
    pd.DataFrame(
        {
            "sample": [f"smp_{p}_{k}" for p in (13, 14) for k in range(4)],
            "plate": [f"plate{p}" for p in (13, 14) for _ in range(4)],
        }
    ).to_csv(tables["sample"], index=False)

    # scBaseCamp-like: var index = Ensembl ids (some with version suffixes, some outside the vocab).
    srx = [f"SRX{1000 + i}" for i in range(4)]
    for k in range(2):
        n = cells_per_file
        sbc_genes = genes[: n_genes - 20] + ensembl_ids(20, offset=900_000)  # 20 genes not in the vocab
        sbc_genes = [g + ".7" if i % 5 == 0 else g for i, g in enumerate(sbc_genes)]
        obs = pd.DataFrame(
            {"SRX_accession": pd.Categorical(rng.choice(srx, n))}, index=[f"sbc{k}_cell{i:05d}" for i in range(n)]
        )
        X = random_counts(rng, n, n_genes, 0.04)
        write_h5ad(sbc_dir / f"h5ad/SRX_batch{k}.h5ad", X, obs, pd.DataFrame(index=sbc_genes))
    tables["srx"].parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(
        {
            "srx_accession": [f" {s} " for s in srx[:3]] + [srx[0]],  # padded keys + a duplicate (first kept)
            "tissue": ["lung", "blood", "liver", "DUPLICATE"],
            "disease": ["normal", "COVID-19", "normal", "DUPLICATE"],
            "perturbation": ["", "", "drug", "DUPLICATE"],
            "cell_line": ["", "", "HepG2", "DUPLICATE"],
        }
    ).to_parquet(tables["srx"], index=False)

    # Census-like chunks: var feature_id / feature_name, obs soma_joinid.
    cxg_dir = raw / "cellxgene_2025_01_21"
    for k in range(2):
        n = cells_per_file
        obs = pd.DataFrame({"soma_joinid": np.arange(k * n, (k + 1) * n)}, index=[str(k * n + i) for i in range(n)])
        var = pd.DataFrame({"feature_id": genes, "feature_name": symbols}, index=[str(i) for i in range(n_genes)])
        write_h5ad(cxg_dir / f"chunk_{k}.h5ad", random_counts(rng, n, n_genes, 0.08), obs, var)
    return DemoAtlas(root, reference, tahoe_dir, sbc_dir / "h5ad", cxg_dir, tables, genes)
