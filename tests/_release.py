"""Local stand-ins of the sources' current layouts (no network): the Tahoe-100M Hugging Face release and
the Arc Requester Pays bucket paths, as folders that file:// or a 127.0.0.1 HTTP server can serve."""

from __future__ import annotations

import functools
import http.server
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from cellcorpus.demo import CELL_LINES, DRUGS, SMILES, ensembl_ids, make_demo_atlas

N_GENES = 120
RELEASE_METADATA = ("gene_metadata", "obs_metadata", "drug_metadata", "sample_metadata", "cell_line_metadata")


def make_release(root: Path, n_files: int = 2, cells_per_file: int = 150, seed: int = 0) -> dict[str, pd.DataFrame]:
    """`root/data/train-0000i-of-0000n.parquet` (several row groups) + `root/metadata/*.parquet`, shaped like
    tahoebio/Tahoe-100M. Release token ids: 0 = CLS, 3.. = genes (token 3 + k -> gene k). Returns the tables."""
    rng = np.random.default_rng(seed)
    genes = ensembl_ids(N_GENES)
    gene_table = pd.DataFrame(
        {
            "token_id": np.arange(3, 3 + N_GENES),
            "ensembl_id": [g + ".3" if k % 7 == 0 else g for k, g in enumerate(genes)],  # some versioned
            "gene_symbol": [f"GENE{k}" for k in range(N_GENES)],
        }
    )
    obs_rows = []
    (root / "data").mkdir(parents=True, exist_ok=True)
    for f in range(n_files):
        plate = f"plate{f + 1}"
        cells_g, cells_e = [], []
        for _ in range(cells_per_file):
            k = int(rng.integers(5, 30))
            cols = np.sort(rng.choice(N_GENES, k, replace=False))
            cells_g.append([0, *(3 + cols).tolist()])
            cells_e.append([-2.0, *rng.integers(1, 20, k).astype(float).tolist()])
        barcodes = [f"{f:02d}_{i:03d}_{rng.integers(1000):03d}-lib_{1100 + f}" for i in range(cells_per_file)]
        drugs = rng.choice(DRUGS, cells_per_file)
        cell_lines = rng.choice(CELL_LINES, cells_per_file)
        table = pa.table(
            {
                "genes": pa.array(cells_g, pa.list_(pa.int64())),
                "expressions": pa.array(cells_e, pa.list_(pa.float32())),
                "drug": drugs,
                "sample": [f"smp_{f}{k % 3}" for k in range(cells_per_file)],
                "BARCODE_SUB_LIB_ID": barcodes,
                "cell_line_id": cell_lines,
                "moa-fine": ["unclear"] * cells_per_file,
                "canonical_smiles": [SMILES[d] for d in drugs],
                "pubchem_cid": ["1923.0"] * cells_per_file,
                "plate": [plate] * cells_per_file,
            }
        )
        pq.write_table(table, root / "data" / f"train-{f:05d}-of-{n_files:05d}.parquet", row_group_size=40)
        pass_filter = rng.choice(["full", "minimal"], cells_per_file, p=[0.8, 0.2])
        obs_rows.append(pd.DataFrame({"BARCODE_SUB_LIB_ID": barcodes, "pass_filter": pass_filter, "plate": plate}))
    tables = {
        "gene_metadata": gene_table,
        "obs_metadata": pd.concat(obs_rows, ignore_index=True).sample(frac=1.0, random_state=1),  # other order
        "drug_metadata": pd.DataFrame(
            {
                "drug": DRUGS,
                "canonical_smiles": [SMILES[d] for d in DRUGS],
                "targets": ["", "PSMB5", "MAP2K1", "TUBB", "BTK"],
                "moa-fine": ["vehicle", "proteasome", "MEK", "tubulin", "BTK"],
            }
        ),
        "sample_metadata": pd.DataFrame({"sample": [f"smp_{f}{k}" for f in range(n_files) for k in range(3)]}),
        "cell_line_metadata": pd.DataFrame({"cell_line_id": CELL_LINES, "cell_name": ["A549", "HepG2", "K562"]}),
    }
    (root / "metadata").mkdir(parents=True, exist_ok=True)
    for name, df in tables.items():
        df.to_parquet(root / "metadata" / f"{name}.parquet", index=False)
    return tables


def make_arc_bucket(root: Path) -> Path:
    """The demo's scBaseCamp-like files under the 2026-01-12 path of gs://arc-institute-virtual-cell-atlas."""
    atlas = make_demo_atlas(root / "atlas")
    bucket = root / "arc-institute-virtual-cell-atlas"
    h5ad = bucket / "scbasecount" / "2026-01-12" / "h5ad" / "GeneFull_Ex50pAS" / "Homo_sapiens"
    meta = bucket / "scbasecount" / "2026-01-12" / "metadata" / "GeneFull_Ex50pAS" / "Homo_sapiens"
    shutil.copytree(atlas.scbasecamp_dir, h5ad)
    meta.mkdir(parents=True)
    shutil.copy(atlas.tables["srx"], meta / "sample_metadata.parquet")
    return bucket


@contextmanager
def http_server(directory: Path) -> Iterator[str]:
    """Serve `directory` on 127.0.0.1 at a free port (not 443); directory listings carry no sizes."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(directory)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
