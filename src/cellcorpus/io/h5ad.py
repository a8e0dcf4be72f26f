"""Row-range reads from .h5ad files with h5py.

anndata reads whole elements (or a whole backed X for CSC); a work unit must read only its rows,
so X row slices and obs column slices are done here directly on the HDF5 layout anndata writes
(encoding-type attrs: csr_matrix, csc_matrix, dense array, categorical, string-array, nullable-*).
The small `var` frame is read whole with anndata's own reader.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd

from cellcorpus.errors import InputError
from cellcorpus.io.paths import filesystem, is_url

__all__ = ["H5adReader", "CSC_BLOCK_COLS"]

CSC_BLOCK_COLS = 2048  # columns per read when a CSC matrix must be scanned for a row range


class H5adReader:
    """Open one .h5ad; read var, obs column slices and X row ranges as CSR arrays."""

    def __init__(self, path: str | Path, layer: str | None = None) -> None:
        """`layer`: read counts from `layers/<layer>` instead of X (scBaseCamp 2026 files carry several)."""
        self.path = str(path)
        self._remote = None
        try:
            if is_url(self.path):
                # Remote input (s3://, gs://, ...): h5py reads through an fsspec file with range requests,
                # so a unit still fetches only its rows' bytes (plus HDF5 metadata). The block size goes to
                # `fs.open`: `fsspec.open` would hand it to the filesystem's constructor, which s3fs refuses.
                fs, remote_path = filesystem(self.path)
                self._remote = fs.open(remote_path, "rb", block_size=1 << 22)
                self._f = h5py.File(self._remote, "r")
            else:
                self._f = h5py.File(self.path, "r")
        except (OSError, ValueError) as exc:
            if self._remote is not None:
                self._remote.close()
            raise InputError(f"{self.path}: not a readable .h5ad (HDF5) file: {exc}") from exc
        for key in ("X", "obs", "var"):
            if key not in self._f:
                self.close()
                raise InputError(f"{self.path}: malformed .h5ad, missing '{key}'")
        if layer is None:
            self._x = self._f["X"]
        else:
            layers = self._f.get("layers")
            if layers is None or layer not in layers:
                available = ", ".join(layers) if layers is not None else "none"
                self.close()
                raise InputError(f"{self.path}: no layer '{layer}' (layers: {available})")
            self._x = layers[layer]
        self.n_obs, self.n_vars = self._shape()

    def __enter__(self) -> H5adReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the HDF5 file (and the remote file under it)."""
        self._f.close()
        if self._remote is not None:
            self._remote.close()

    # ---- layout -------------------------------------------------------------------------------
    @property
    def x_encoding(self) -> str:
        """`csr_matrix`, `csc_matrix` or `dense`; anything else is an InputError."""
        if isinstance(self._x, h5py.Dataset):
            return "dense"
        enc = _decode(self._x.attrs.get("encoding-type", ""))
        if enc not in ("csr_matrix", "csc_matrix"):
            raise InputError(f"{self.path}: unsupported X encoding '{enc}'")
        return enc

    def _shape(self) -> tuple[int, int]:
        if isinstance(self._x, h5py.Dataset):
            if self._x.ndim != 2:
                raise InputError(f"{self.path}: X must be 2-D, got shape {self._x.shape}")
            return int(self._x.shape[0]), int(self._x.shape[1])
        shape = self._x.attrs.get("shape", self._x.attrs.get("h5sparse_shape"))
        if shape is None:
            raise InputError(f"{self.path}: sparse X has no 'shape' attribute")
        return int(shape[0]), int(shape[1])

    # ---- var ----------------------------------------------------------------------------------
    def var_columns(self) -> list[str]:
        """Names of the var columns (without the index), read from the HDF5 keys only."""
        var = self._f["var"]
        index_key = _decode(var.attrs.get("_index", "_index"))
        return [k for k in var if k not in (index_key, "__categories")]

    def first_var_column(self, names: list[str]) -> str | None:
        """The first of `names` this file's var has (`index` always), None when it has none of them."""
        present = {"index", *self.var_columns()}
        return next((n for n in names if n in present), None)

    def var_column(self, name: str) -> np.ndarray:
        """Values of a var column (`index` = the var index) as an object array of str; reads that column only."""
        var = self._f["var"]
        key = _decode(var.attrs.get("_index", "_index")) if name == "index" else name
        if key not in var or key == "__categories":
            raise InputError(
                f"{self.path}: var has no column '{name}'",
                hint=f"available: index, {', '.join(self.var_columns())}",
            )
        node = var[key]
        n = node["codes"].shape[0] if isinstance(node, h5py.Group) and "codes" in node else None
        if n is None:
            n = node["values"].shape[0] if isinstance(node, h5py.Group) else node.shape[0]
        values = _read_column(node, 0, n, var)
        return np.asarray(pd.Series(values, dtype=object).astype(str), dtype=object)

    # ---- obs ----------------------------------------------------------------------------------
    @property
    def _index_key(self) -> str:
        """The obs dataset holding the index (anndata's `_index` attribute)."""
        return _decode(self._f["obs"].attrs.get("_index", "_index"))

    @property
    def obs_index_name(self) -> str:
        """Column name the obs index is stored under (anndata's `_index` -> `index`, as pandas)."""
        key = self._index_key
        return "index" if key == "_index" else key

    def layer_names(self) -> list[str]:
        """Names under `layers/` (empty when the file has none)."""
        layers = self._f.get("layers")
        return list(layers) if layers is not None else []

    def obs_columns(self) -> list[str]:
        """Obs keys in the file (the index dataset included)."""
        return [k for k in self._f["obs"] if k != "__categories"]

    def obs_column(self, name: str, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) of an obs column; `index` (or the index name) gives the obs index."""
        obs = self._f["obs"]
        if name in ("index", self.obs_index_name) and name not in obs:
            name = self._index_key
        if name not in obs:
            raise InputError(
                f"{self.path}: obs has no column '{name}'", hint=f"available: {', '.join(self.obs_columns())}"
            )
        return _read_column(obs[name], start, stop, obs)

    # ---- X ------------------------------------------------------------------------------------
    def read_rows(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """CSR (indptr from 0, indices, data) of rows [start, stop), reading only those rows."""
        enc = self.x_encoding
        if enc == "csr_matrix":
            ip = self._x["indptr"][start : stop + 1].astype(np.int64)
            lo, hi = int(ip[0]), int(ip[-1])
            return ip - lo, self._x["indices"][lo:hi], self._x["data"][lo:hi]
        if enc == "dense":
            block = self._x[start:stop]
            return _dense_to_csr(block)
        return self._csc_rows(start, stop)

    def _csc_rows(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        # CSC stores columns contiguously: scan in column blocks, keep entries in the row range.
        # Memory stays bounded by the block, but the whole matrix is read once per unit.
        indptr = self._x["indptr"][:].astype(np.int64)
        rows_l, cols_l, vals_l = [], [], []
        for c0 in range(0, self.n_vars, CSC_BLOCK_COLS):
            c1 = min(c0 + CSC_BLOCK_COLS, self.n_vars)
            lo, hi = int(indptr[c0]), int(indptr[c1])
            r = self._x["indices"][lo:hi]
            v = self._x["data"][lo:hi]
            col = np.repeat(np.arange(c0, c1), np.diff(indptr[c0 : c1 + 1]))
            m = (r >= start) & (r < stop)
            rows_l.append(r[m] - start)
            cols_l.append(col[m])
            vals_l.append(v[m])
        rows = np.concatenate(rows_l) if rows_l else np.zeros(0, np.int64)
        cols = np.concatenate(cols_l) if cols_l else np.zeros(0, np.int64)
        vals = np.concatenate(vals_l) if vals_l else np.zeros(0, np.float32)
        order = np.lexsort((cols, rows))  # row-major, columns ascending within a row
        counts = np.bincount(rows, minlength=stop - start)
        ip = np.zeros(stop - start + 1, dtype=np.int64)
        np.cumsum(counts, out=ip[1:])
        return ip, cols[order].astype(np.int32), vals[order]


def _dense_to_csr(block: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    # Keep every finite-or-not value that is non-zero; NaN != 0 so it survives for scan_counts.
    mask = block != 0
    counts = mask.sum(axis=1)
    ip = np.zeros(block.shape[0] + 1, dtype=np.int64)
    np.cumsum(counts, out=ip[1:])
    _, cols = np.nonzero(mask)
    return ip, cols.astype(np.int32), block[mask]


def _decode(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _decode_codes(codes: np.ndarray, categories: np.ndarray) -> np.ndarray:
    """Categorical codes -> values; code -1 (missing) -> None."""
    codes = codes.astype(np.int64)
    out = np.full(len(codes), None, dtype=object)
    valid = codes >= 0
    out[valid] = np.asarray(categories, dtype=object)[codes[valid]]
    return out


def _read_column(node: h5py.Dataset | h5py.Group, start: int, stop: int, obs: h5py.Group) -> np.ndarray:
    if isinstance(node, h5py.Group):
        enc = _decode(node.attrs.get("encoding-type", ""))
        if enc == "categorical":
            cats = _read_column(node["categories"], 0, node["categories"].shape[0], obs)
            return _decode_codes(node["codes"][start:stop], cats)
        if enc.startswith("nullable"):
            values = node["values"][start:stop].astype(object)
            values[node["mask"][start:stop]] = None
            return values
        raise InputError(f"{node.file.filename}: unsupported obs column encoding '{enc}' for {node.name}")
    ds = node
    # anndata < 0.8 kept categories in obs/__categories with integer codes in the column.
    legacy = obs.get("__categories")
    if legacy is not None and node.name.split("/")[-1] in legacy:
        cats = _read_column(legacy[node.name.split("/")[-1]], 0, legacy[node.name.split("/")[-1]].shape[0], obs)
        return _decode_codes(ds[start:stop], cats)
    if h5py.check_string_dtype(ds.dtype) is not None:
        return np.asarray(ds.asstr()[start:stop], dtype=object)
    if ds.dtype.kind == "S":
        return np.char.decode(ds[start:stop], "utf-8").astype(object)
    return ds[start:stop]
