"""Tokenize's content-key check: no two kept cells of a corpus share a split key (`split_parameters.key`).

A unit checks its own rows and saves its kept cells' key hashes, sorted, beside its parts; before any dataset
file is written, the parent looks for a hash in two units. In bounded memory whatever the corpus' size: up to
`PART_KEYS` cells the hashes are compared at once, beyond that they are first spread over hash-range partition
files (like the shuffle's buckets), one partition in memory at a time. Two cells with the same 64-bit hash
are read back from their inputs, and only equal key values are an error: a mere hash collision (about one
pair in 270M cells) puts two different cells in the same split, which leaks nothing.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from cellcorpus.config import HuggingfaceConfig
from cellcorpus.core.ids import decode_ids
from cellcorpus.core.partition import n_partitions, partition_slices
from cellcorpus.core.split import equal_pairs
from cellcorpus.errors import InputError
from cellcorpus.io.tables import as_strings
from cellcorpus.sources.base import InputFile
from cellcorpus.sources.inputs import input_format

__all__ = ["write_unit_keys", "check_unique_keys", "PART_KEYS"]

PART_KEYS = 1 << 22  # hashes compared in memory at once (32 MB of keys + 32 MB of ids)
_KEYS = "keys"  # sub-folder of the parts folder


def _paths(parts_dir: Path, unit_id: str) -> tuple[Path, Path]:
    folder = parts_dir / _KEYS
    return folder / f"{unit_id}.keys.npy", folder / f"{unit_id}.ids.npy"


def write_unit_keys(parts_dir: Path, unit_id: str, keys: NDArray[np.int64], ids: NDArray[np.int64]) -> None:
    """Save a unit's kept cells' key hashes (sorted, as uint64) and their cell ids in the same order."""
    order = np.argsort(keys.view(np.uint64), kind="stable")
    key_path, id_path = _paths(parts_dir, unit_id)
    key_path.parent.mkdir(parents=True, exist_ok=True)
    for path, values in ((key_path, keys.view(np.uint64)[order]), (id_path, ids[order])):
        tmp = path.with_suffix(".tmp.npy")
        np.save(tmp, values)
        tmp.replace(path)  # a unit's record is written after its files: a rerun redoes a half-saved unit


def check_unique_keys(parts_dir: Path, unit_ids: list[str], hf: HuggingfaceConfig, inputs: list[InputFile]) -> None:
    """Raise InputError naming two cells (input, row, key values) when two kept cells share a content key."""
    sizes = [int(np.load(_paths(parts_dir, u)[0], mmap_mode="r").shape[0]) for u in unit_ids]
    n_parts = n_partitions(sum(sizes), PART_KEYS)
    if n_parts == 1:
        _check_partition(*_load_all(parts_dir, unit_ids), hf, inputs)
        return
    with tempfile.TemporaryDirectory(dir=parts_dir / _KEYS, prefix="partitions-") as tmp:
        key_files = [open(Path(tmp) / f"{p}.keys", "wb") for p in range(n_parts)]  # noqa: SIM115 - closed below
        id_files = [open(Path(tmp) / f"{p}.ids", "wb") for p in range(n_parts)]  # noqa: SIM115 - closed below
        try:
            for u in unit_ids:
                keys, ids = (np.load(p) for p in _paths(parts_dir, u))
                for p, (a, b) in enumerate(partition_slices(keys, n_parts)):
                    keys[a:b].tofile(key_files[p])
                    ids[a:b].tofile(id_files[p])
        finally:
            for f in key_files + id_files:
                f.close()
        for p in range(n_parts):
            keys = np.fromfile(Path(tmp) / f"{p}.keys", dtype=np.uint64)
            ids = np.fromfile(Path(tmp) / f"{p}.ids", dtype=np.int64)
            _check_partition(keys, ids, hf, inputs)


def _load_all(parts_dir: Path, unit_ids: list[str]) -> tuple[NDArray[np.uint64], NDArray[np.int64]]:
    pairs = [tuple(np.load(p) for p in _paths(parts_dir, u)) for u in unit_ids]
    if not pairs:
        return np.zeros(0, np.uint64), np.zeros(0, np.int64)
    return np.concatenate([k for k, _ in pairs]), np.concatenate([i for _, i in pairs])


def _check_partition(
    keys: NDArray[np.uint64], ids: NDArray[np.int64], hf: HuggingfaceConfig, inputs: list[InputFile]
) -> None:
    for i, j in equal_pairs(keys)[:100].tolist():  # beyond 100 equal hashes: a real repeat
        a, b = (_key_values(int(ids[k]), hf, inputs) for k in (i, j))
        if a[1] == b[1]:
            shown = ", ".join(f"{name}={value!r}" for name, value in zip(hf.split_parameters.key, a[1], strict=True))
            raise InputError(
                f"huggingface.split_parameters.key does not identify a cell: {a[0]} and {b[0]} both have {shown}",
                hint="add a column to the key (e.g. the sample or plate), or use key: id",
            )


def _key_values(cell_id: int, hf: HuggingfaceConfig, inputs: list[InputFile]) -> tuple[str, tuple[str, ...]]:
    """('<input> row <r>', the cell's key values) read back from its input (obs columns; joined ones as '?')."""
    f, r = decode_ids(np.array([cell_id], dtype=np.int64))
    source = {i.file_index: i for i in inputs}[int(f[0])]
    row = int(r[0])
    block = input_format(hf).read_block(source.path, row, row + 1, hf)
    values = tuple(str(as_strings(block.obs[n])[0]) if n in block.obs else "?" for n in hf.split_parameters.key)
    return f"{source.rel_path} row {row}", values
