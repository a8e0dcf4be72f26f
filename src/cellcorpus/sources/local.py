"""A local folder of .h5ad / .h5ad.gz files (the general case; also where downloads land)."""

from __future__ import annotations

import gzip
import os
import shutil
from pathlib import Path

from cellcorpus.errors import ConfigError, InputError
from cellcorpus.io.atomic import atomic_path
from cellcorpus.io.h5ad import H5adReader
from cellcorpus.manifest import quick_checksum
from cellcorpus.sources.base import InputFile, RawBlock

__all__ = ["find_h5ad_files", "discover_h5ad", "read_h5ad_block"]

SUFFIXES = (".h5ad", ".h5ad.gz")


def find_h5ad_files(directory: str, ignore_dir: list[str]) -> list[Path]:
    """All .h5ad/.h5ad.gz files below `directory`, skipping folders named in `ignore_dir`; sorted."""
    root = Path(directory)
    if not root.is_dir():
        raise ConfigError(f"huggingface.adata_dir: folder not found: {directory}")
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in ignore_dir and not d.startswith("."))
        found += [Path(dirpath) / f for f in filenames if f.endswith(SUFFIXES) and not f.startswith(".")]
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def _decompressed(path: Path, cache_dir: Path, rel: str) -> Path:
    """h5py cannot read gzip streams: decompress once into the cache (atomic, reused on rerun)."""
    target = cache_dir / rel[: -len(".gz")]
    if target.is_file():
        return target
    with atomic_path(target) as tmp, gzip.open(path, "rb") as src, open(tmp, "wb") as dst:
        try:
            shutil.copyfileobj(src, dst, length=1 << 22)
        except (OSError, EOFError) as exc:
            raise InputError(f"{path}: corrupt gzip file: {exc}") from exc
    return target


def discover_h5ad(adata_dir: str, ignore_dir: list[str], cache_dir: str) -> list[InputFile]:
    """List inputs with their cell counts; unreadable or empty files are errors naming the file."""
    files = find_h5ad_files(adata_dir, ignore_dir)
    if not files:
        raise InputError(f"no .h5ad files found under {adata_dir}", hint="check huggingface.adata_dir / ignore_dir")
    out = []
    for i, path in enumerate(files):
        rel = path.relative_to(adata_dir).as_posix()
        readable = _decompressed(path, Path(cache_dir), rel) if rel.endswith(".gz") else path
        with H5adReader(readable) as r:
            n_obs = r.n_obs
            r.x_encoding  # noqa: B018 - validates the X layout now, before any worker starts
        if n_obs == 0:
            raise InputError(f"{path}: file has no cells")
        out.append(InputFile(str(readable), rel, i, n_obs, path.stat().st_size, quick_checksum(path)))
    return out


def read_h5ad_block(path: str, row_start: int, row_stop: int, gene_col: str, obs_names: list[str]) -> RawBlock:
    """Read one unit's rows, the gene ids of the columns and the named obs columns (row slices only)."""
    with H5adReader(path) as r:
        indptr, indices, data = r.read_rows(row_start, row_stop)
        obs = {name: r.obs_column(name, row_start, row_stop) for name in dict.fromkeys(["index", *obs_names])}
        return RawBlock(indptr, indices, data, r.var_column(gene_col), obs, r.obs_index_name)
