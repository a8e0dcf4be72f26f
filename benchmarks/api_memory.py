"""`tokenize_anndata` on an in-memory AnnData: time and peak memory against the size of the table it returns.

    python benchmarks/api_memory.py [--cells 40000] [--genes 20000] [--per-cell 750]

Synthetic integer counts (`--per-cell` genes per cell), one obs column. Peak RSS is measured over the call
against the process's RSS just before it (not the high-water mark of building the input). Nothing is asserted;
issue 24 asked for at most 2x the returned table (a `to_pydict` round trip used to take ~12x, 12 s at 40k cells).
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import time

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from cellcorpus import build_vocab, tokenize_anndata


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cells", type=int, default=40_000)
    ap.add_argument("--genes", type=int, default=20_000)
    ap.add_argument("--per-cell", type=int, default=750)
    args = ap.parse_args()
    n, g, k = args.cells, args.genes, args.per_cell
    rng = np.random.default_rng(0)
    X = sp.csr_matrix(
        (
            rng.integers(1, 20, n * k).astype(np.float32),
            np.sort(rng.integers(0, g, (n, k)), axis=1).astype(np.int32).ravel(),
            np.arange(n + 1, dtype=np.int64) * k,
        ),
        shape=(n, g),
    )
    X.sum_duplicates()
    genes = [f"ENSG{i:011d}" for i in range(g)]
    obs = pd.DataFrame({"drug": rng.choice(["a", "b"], n)}, index=[f"c{i}" for i in range(n)])
    adata = ad.AnnData(X, obs=obs, var=pd.DataFrame(index=genes))
    vocab = build_vocab(genes)
    gc.collect()
    before = _rss_mb()
    t = time.perf_counter()
    table = tokenize_anndata(adata, vocab, obs_metadata_columns=["drug"])
    t = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3
    mb = table.nbytes / 1e6
    print(
        f"{n:,} cells, {X.nnz:,} counts: {t:.1f} s ({n / t:,.0f} cells/s); table {mb:.0f} MB; RSS {before:.0f} MB "
        f"before, peak {peak:.0f} MB: +{peak - before:.0f} MB = {(peak - before) / mb:.2f}x the table"
    )


if __name__ == "__main__":
    main()
