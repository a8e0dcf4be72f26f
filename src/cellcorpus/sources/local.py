"""A local folder of .h5ad / .h5ad.gz files (the general case; also where downloads land)."""

from __future__ import annotations

import shutil
import zlib
from collections.abc import Callable
from pathlib import Path

import fsspec
import numpy as np
import xxhash

from cellcorpus.errors import ConfigError, InputError
from cellcorpus.io.atomic import atomic_path
from cellcorpus.io.h5ad import H5adReader
from cellcorpus.io.owned import claim_dir
from cellcorpus.io.paths import exists, filesystem, is_url, join
from cellcorpus.manifest import quick_checksum
from cellcorpus.sources.base import InputFile, RawBlock

__all__ = ["find_h5ad_files", "discover_h5ad", "read_h5ad_block"]

SUFFIXES = (".h5ad", ".h5ad.gz")


def find_h5ad_files(directory: str, ignore_dir: list[str]) -> list[str]:
    """All .h5ad/.h5ad.gz files below `directory` (a folder or fsspec URL), skipping folders named in
    `ignore_dir` and hidden entries; sorted by relative path (this order defines file_index).
    """
    if not exists(directory):
        raise ConfigError(f"huggingface.adata_dir: folder not found: {directory}")
    fs, root = filesystem(directory)
    root = root.rstrip("/")
    found = []
    for path in fs.find(root):
        rel = path[len(root) :].lstrip("/")
        parts = rel.split("/")
        hidden_or_ignored = any(p.startswith(".") or p in ignore_dir for p in parts[:-1]) or parts[-1].startswith(".")
        if rel.endswith(SUFFIXES) and not hidden_or_ignored:
            found.append(rel)
    return sorted(found)


def _decompressed(path: str, cache_dir: Path, rel: str, fingerprint: str) -> Path:
    """h5py cannot read gzip streams: decompress once into the cache (atomic, reused on rerun).

    The copy is tied to its source by `fingerprint` (the `.gz`'s checksum), recorded beside it after the copy
    is whole: a replaced `.gz` gives another fingerprint, and its stale copy is decompressed again, never read.
    """
    target = cache_dir / rel[: -len(".gz")]
    stamp = target.with_name(f".{target.name}.source")
    if target.is_file() and stamp.is_file() and stamp.read_text() == fingerprint:
        return target
    claim_dir(cache_dir, "huggingface.output_root (decompressed/)")
    stamp.unlink(missing_ok=True)  # from here until the new stamp, the copy counts as stale
    with atomic_path(target) as tmp, fsspec.open(path, "rb", compression="gzip") as src, open(tmp, "wb") as dst:
        try:
            shutil.copyfileobj(src, dst, length=1 << 22)
        except (OSError, EOFError, zlib.error) as exc:
            raise InputError(f"{path}: corrupt gzip file: {exc}") from exc
    with atomic_path(stamp) as tmp:
        tmp.write_text(fingerprint)
    return target


def _remote_checksum(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """Object stores give size + ETag/mtime without reading the object."""
    info = fs.info(path)
    key = [info.get("size"), info.get("ETag") or info.get("etag") or info.get("md5Hash"), str(info.get("mtime"))]
    return xxhash.xxh64(repr(key).encode()).hexdigest()


def discover_h5ad(
    adata_dir: str,
    ignore_dir: list[str],
    cache_dir: str,
    layer: str | None = None,
    visit: Callable[[InputFile, H5adReader], None] | None = None,
) -> list[InputFile]:
    """List inputs with their cell counts; unreadable or empty files are errors naming the file.

    `visit(input, reader)` runs while each file is open (the inspection), so a file is opened once, not twice.
    """
    rels = find_h5ad_files(adata_dir, ignore_dir)
    if not rels:
        raise InputError(f"no .h5ad files found under {adata_dir}", hint="check huggingface.adata_dir / ignore_dir")
    fs, root = filesystem(adata_dir)
    out = []
    for i, rel in enumerate(rels):
        path = join(adata_dir, rel)
        full = f"{root.rstrip('/')}/{rel}"
        checksum = _remote_checksum(fs, full) if is_url(adata_dir) else quick_checksum(full)
        readable = str(_decompressed(path, Path(cache_dir), rel, checksum)) if rel.endswith(".gz") else path
        try:
            reader = H5adReader(readable, layer)
        except InputError as exc:
            if layer is not None and "no layer" in exc.message:
                raise ConfigError(f"huggingface.counts_layer: {exc.message}") from exc
            raise
        with reader as r:
            n_obs = r.n_obs
            r.x_encoding  # noqa: B018 - validates the X layout now, before any worker starts
            if n_obs == 0:
                raise InputError(f"{path}: file has no cells")
            f = InputFile(readable, rel, i, n_obs, int(fs.size(full)), checksum)
            if visit is not None:
                visit(f, r)
        out.append(f)
    return out


def read_h5ad_block(
    path: str, row_start: int, row_stop: int, gene_col: str | list[str], obs_names: list[str], layer: str | None = None
) -> RawBlock:
    """Read one unit's rows (of X, or of `layer`), the gene ids of the columns (`gene_col`, or the first of a list
    of var columns the file has) and the named obs columns."""
    with H5adReader(path, layer) as r:
        indptr, indices, data = r.read_rows(row_start, row_stop)
        # names absent from obs are skipped: they come from join tables (checked at preflight)
        present = set(r.obs_columns()) | {"index", r.obs_index_name}
        names = [n for n in dict.fromkeys(["index", *obs_names]) if n in present]
        obs = {name: r.obs_column(name, row_start, row_stop) for name in names}
        cols = [gene_col] if isinstance(gene_col, str) else gene_col
        var_ids = _var_ids(path, r.first_var_column(cols) or cols[0], _stamp(path), r)
        return RawBlock(indptr, indices, data, var_ids, obs, r.obs_index_name)


def _stamp(path: str) -> str:
    return "" if is_url(path) else str(Path(path).stat().st_mtime_ns)


_VAR_CACHE: dict[tuple[str, str, str], np.ndarray] = {}


def _var_ids(path: str, gene_col: str, stamp: str, reader: H5adReader) -> np.ndarray:
    """A file's gene ids, read once per worker (every unit of a file has the same var)."""
    key = (path, gene_col, stamp)
    if key not in _VAR_CACHE:
        if len(_VAR_CACHE) >= 4:
            _VAR_CACHE.pop(next(iter(_VAR_CACHE)))
        _VAR_CACHE[key] = reader.var_column(gene_col)
    return _VAR_CACHE[key]
