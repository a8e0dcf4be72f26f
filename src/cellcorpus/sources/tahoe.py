"""The Tahoe-100M parquet release as a tokenize input.

Its `genes` are token ids of the release's own gene table (`gene_metadata`: token_id -> ensembl_id),
each cell starting with a CLS token whose expression is -2. A block is presented to the tokenizer
as CSR whose columns are the release token ids, with `var_ids[token_id] = ensembl_id`, so cells are
re-keyed into our vocabulary by the same vectorised path as h5ad input (unknown genes dropped and
counted). Rows are read by row group: only the groups overlapping the unit's range.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from cellcorpus.errors import ConfigError, InputError
from cellcorpus.io.tables import as_strings
from cellcorpus.manifest import quick_checksum
from cellcorpus.sources.base import InputFile, RawBlock

__all__ = ["discover_parquet", "read_parquet_block", "load_gene_table", "RELEASE_PAD", "INDEX_COLUMN"]

RELEASE_PAD = -2.0  # expression of the release's leading CLS token
INDEX_COLUMN = "BARCODE_SUB_LIB_ID"  # the release's cell barcode: our obs index


def discover_parquet(
    directory: str, ignore_dir: list[str], visit: Callable[[InputFile, Any], None] | None = None
) -> list[InputFile]:
    """Every .parquet file below `directory` (sorted; folders in `ignore_dir` skipped); `visit(input, None)`
    inspects each as it is listed (a parquet schema is read from the footer, so nothing is kept open)."""
    root = Path(directory)
    if not root.is_dir():
        raise ConfigError(f"huggingface.adata_dir: folder not found: {directory}")
    files = sorted(
        (p for p in root.rglob("*.parquet") if not set(p.relative_to(root).parts[:-1]) & set(ignore_dir)),
        key=lambda p: p.relative_to(root).as_posix(),
    )
    if not files:
        raise InputError(f"no .parquet files found under {directory}")
    out = []
    for i, p in enumerate(files):
        try:
            meta = pq.ParquetFile(p).metadata
        except Exception as exc:
            raise InputError(f"{p}: not a readable parquet file: {exc}") from exc
        if meta.num_rows == 0:
            raise InputError(f"{p}: file has no cells")
        f = InputFile(str(p), p.relative_to(root).as_posix(), i, meta.num_rows, p.stat().st_size, quick_checksum(p))
        if visit is not None:
            visit(f, None)
        out.append(f)
    return out


def load_gene_table(path: str) -> np.ndarray:
    """Var ids indexed by release token id ('' where the table has no entry); cached per process."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"huggingface.parquet_gene_table: file not found: {path}")
    return _gene_table(str(p), p.stat().st_mtime_ns)


@functools.lru_cache(maxsize=4)
def _gene_table(path: str, mtime_ns: int) -> np.ndarray:
    del mtime_ns  # cache key only
    p = Path(path)
    df = pd.read_parquet(p) if p.suffix == ".parquet" else pd.read_csv(p)
    if not {"token_id", "ensembl_id"} <= set(df.columns):
        raise InputError(f"{path}: gene table needs columns token_id, ensembl_id", hint=f"has {list(df.columns)}")
    tok = df["token_id"].to_numpy(dtype=np.int64)
    ids = np.full(int(tok.max()) + 1, "", dtype=object)
    ids[tok] = as_strings(df["ensembl_id"].to_numpy())
    return ids


def read_parquet_block(
    path: str, row_start: int, row_stop: int, gene_table: str | None, obs_names: list[str]
) -> RawBlock:
    """Rows [row_start, row_stop) of a release parquet file as a RawBlock (leading CLS removed)."""
    f = pq.ParquetFile(path)
    meta = f.metadata
    groups, first_row, pos = [], None, 0
    for g in range(meta.num_row_groups):
        n = meta.row_group(g).num_rows
        if pos + n > row_start and pos < row_stop:
            groups.append(g)
            first_row = pos if first_row is None else first_row
        pos += n
    names = set(f.schema_arrow.names)
    missing = [c for c in ("genes", "expressions") if c not in names]  # other names may come from joins
    if missing:
        raise InputError(f"{path}: parquet has no column(s) {missing}", hint=f"available: {sorted(names)}")
    cols = ["genes", "expressions"] + [c for c in dict.fromkeys([*obs_names, INDEX_COLUMN]) if c in names]
    table: pa.Table = f.read_row_groups(groups, columns=cols).slice(row_start - first_row, row_stop - row_start)
    genes = table.column("genes").combine_chunks()
    exprs = table.column("expressions").combine_chunks()
    g_off = genes.offsets.to_numpy().astype(np.int64)
    g_val = genes.values.to_numpy()[g_off[0] : g_off[-1]]
    e_val = exprs.values.to_numpy(zero_copy_only=False)[g_off[0] : g_off[-1]]
    g_off -= g_off[0]
    if not np.array_equal(pc.list_value_length(exprs).to_numpy(), np.diff(g_off)):
        raise InputError(f"{path} rows {row_start}-{row_stop}: genes and expressions lengths differ")
    lengths = np.diff(g_off)
    if lengths.min(initial=1) < 1 or not np.all(e_val[g_off[:-1]] == RELEASE_PAD):
        raise InputError(f"{path} rows {row_start}-{row_stop}: cells must start with the release CLS (expression -2)")
    body = np.ones(len(g_val), dtype=bool)
    body[g_off[:-1]] = False
    indptr = g_off - np.arange(len(g_off))  # one CLS removed per row before each boundary
    var_ids = load_gene_table(gene_table) if gene_table else np.zeros(0, object)
    indices = g_val[body].astype(np.int64)
    if len(indices) and (indices.min() < 0 or indices.max() >= len(var_ids)):
        raise InputError(f"{path}: gene token {int(indices.max())} is not in the gene table ({len(var_ids)} tokens)")
    obs = {c: table.column(c).to_numpy(zero_copy_only=False) for c in obs_names if c in table.column_names}
    obs["index"] = (
        table.column(INDEX_COLUMN).to_numpy(zero_copy_only=False)
        if INDEX_COLUMN in table.column_names
        else np.arange(row_start, row_stop).astype(str).astype(object)
    )
    return RawBlock(indptr, indices, e_val[body], var_ids, obs, "index")
