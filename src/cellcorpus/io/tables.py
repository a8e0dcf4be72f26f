"""External metadata tables (CSV or parquet) and the seed's left-join semantics, vectorised.

Seed semantics kept: keys compared as stripped strings, duplicate keys in the table dropped (first
kept), left join (cells without a match get empty strings). Implemented as an index lookup instead
of `DataFrame.merge` so row order and count can never change.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
import pandas as pd

from cellcorpus.errors import InputError

__all__ = ["load_table", "lookup", "as_strings", "join_keys", "is_parquet", "read_frame", "read_columns"]


def as_strings(values: np.ndarray) -> np.ndarray:
    """Object array of str; missing (None/NaN) -> ''. Numbers keep their natural text form."""
    s = pd.Series(values, dtype=object)
    missing = s.isna().to_numpy()
    out = s.astype(str).to_numpy(dtype=object)
    out[missing] = ""
    return out


def join_keys(values: np.ndarray) -> np.ndarray:
    """Join keys as the seed compares them: strings (missing -> ''), surrounding whitespace stripped."""
    return pd.Series(as_strings(values), dtype=object).str.strip().to_numpy()


def _suffix(path: str) -> str:
    return "".join(Path(path.split("?")[0]).suffixes).lower()


def is_parquet(path: str) -> bool:
    """Whether a table path names a parquet file (by its suffix, as `read_frame` decides how to read it)."""
    suffix = _suffix(path)
    return ".parquet" in suffix or suffix.endswith(".pq")


def read_frame(path: str, header: bool = True) -> pd.DataFrame:
    """A CSV / TSV / parquet table (local path or fsspec URL) as read by every table-taking setting.

    Text cells stay strings ('' and missing are both missing), so ids such as '0012' keep their zeros.
    """
    suffix = _suffix(path)
    opts = {"dtype": str, "keep_default_na": False, "na_values": [""], "header": 0 if header else None}
    try:
        if is_parquet(path):
            return pd.read_parquet(path)
        if suffix.endswith((".tsv", ".tsv.gz", ".txt", ".txt.gz")):
            return pd.read_csv(path, sep="\t", **opts)
        return pd.read_csv(path, **opts)
    except Exception as exc:
        raise InputError(f"{path}: cannot read table: {exc}") from exc


@functools.lru_cache(maxsize=16)
def _load(path: str, key: str, columns: tuple[str, ...], mtime_ns: int) -> tuple[pd.Index, dict[str, np.ndarray]]:
    del mtime_ns  # part of the cache key only: a rewritten table is re-read
    df = read_frame(path)
    missing = [c for c in (key, *columns) if c not in df.columns]
    if missing:
        raise InputError(
            f"{path}: metadata table has no column(s) {missing}",
            hint=f"available: {', '.join(map(str, df.columns))}",
        )
    keys = join_keys(df[key].to_numpy())
    first = ~pd.Series(keys).duplicated(keep="first").to_numpy()
    index = pd.Index(keys[first])
    cols = {c: as_strings(df[c].to_numpy())[first] for c in columns}
    return index, cols


def read_columns(path: str, from_column: str | int, to_column: str | int) -> tuple[np.ndarray, np.ndarray]:
    """Two columns of a table by name, or by 0-based position for a headerless table (as strings)."""
    by_position = isinstance(from_column, int)
    df = read_frame(path, header=not by_position)
    out = []
    for key, col in (("from_column", from_column), ("to_column", to_column)):
        if (by_position and not 0 <= int(col) < df.shape[1]) or (not by_position and col not in df.columns):
            raise InputError(
                f"{path}: no column {col!r} (huggingface.gene_id_map.{key})",
                hint=f"columns: {', '.join(map(str, df.columns))}",
            )
        out.append(as_strings(df.iloc[:, int(col)].to_numpy() if by_position else df[col].to_numpy()))
    return out[0], out[1]


def load_table(path: str, key: str, columns: list[str]) -> tuple[pd.Index, dict[str, np.ndarray]]:
    """(unique stripped-string key index, {column: str values aligned to it}); cached per process."""
    if not os.path.exists(path):
        raise InputError(f"metadata table not found: {path}")
    return _load(path, key, tuple(columns), os.stat(path).st_mtime_ns)


def lookup(index: pd.Index, columns: dict[str, np.ndarray], keys: np.ndarray) -> dict[str, np.ndarray]:
    """Left join: for each key (stripped string), the table's values or '' when absent."""
    pos = index.get_indexer(join_keys(keys))
    hit = pos >= 0
    out = {}
    for name, values in columns.items():
        col = np.full(len(keys), "", dtype=object)
        col[hit] = values[pos[hit]]
        out[name] = col
    return out
