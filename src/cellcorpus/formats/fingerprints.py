"""Recorded cell fingerprints: one file per tokenize unit, `(hi, lo, id)` rows sorted by fingerprint.

Written with `np.save` into a file named `<unit>.fp` (a `.npy` body: numpy reads it back with its header and
dtype checked, never with pickle), first by the unit in the scratch parts folder, then moved beside the
datasets (`fingerprints/`) when tokenize finishes, and listed with their checksums in its manifest.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from cellcorpus.core.ids import decode_ids
from cellcorpus.io.atomic import atomic_path
from cellcorpus.io.paths import Publisher

__all__ = [
    "RECORD_DTYPE",
    "FOLDER",
    "write_unit_fingerprints",
    "read_fingerprints",
    "unit_file",
    "publish_fingerprints",
    "write_id_list",
    "read_id_list",
]

RECORD_DTYPE = np.dtype([("hi", "<u8"), ("lo", "<u8"), ("id", "<i8")])
FOLDER = "fingerprints"  # beside the datasets, and in the scratch parts folder


def unit_file(folder: str | Path, unit_id: str) -> Path:
    """Where unit `unit_id`'s fingerprints are, in `folder`."""
    return Path(folder) / FOLDER / f"{unit_id}.fp"


def write_unit_fingerprints(folder: str | Path, unit_id: str, fps: NDArray[Any], ids: NDArray[np.int64]) -> Path:
    """Save a unit's kept cells' fingerprints (FINGERPRINT_DTYPE) and ids, sorted by fingerprint, whole or not
    at all (a killed unit leaves no file that looks complete)."""
    records = np.empty(len(ids), RECORD_DTYPE)
    records["hi"], records["lo"], records["id"] = fps["hi"], fps["lo"], ids
    records.sort(order=["hi", "lo", "id"])
    path = unit_file(folder, unit_id)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, records, allow_pickle=False)
    return path


def read_fingerprints(path: str | Path) -> NDArray[Any]:
    """A unit's records; a file of another shape is a ValueError naming it."""
    records: NDArray[Any] = np.load(path, allow_pickle=False)
    if records.dtype != RECORD_DTYPE or records.ndim != 1:
        raise ValueError(f"{path}: not a fingerprints file (dtype {records.dtype})")
    return records


def publish_fingerprints(
    parts_dir: str | Path, unit_ids: list[str], out: Publisher, recorded: Sequence[str] = ()
) -> list[Path]:
    """Copy every unit's fingerprints from the scratch parts folder into `fingerprints/` beside the datasets
    (each whole or not at all) and publish them; their local paths, in unit order. `recorded`: the files the
    previous build's manifest lists (paths under the root): those no unit wrote now are removed, and nothing else
    in the folder is."""
    written = []
    for unit_id in unit_ids:
        src, dst = unit_file(parts_dir, unit_id), unit_file(out.local_dir, unit_id)
        with atomic_path(dst) as tmp:
            shutil.copyfile(src, tmp)
        written.append(dst)
        out.publish(dst)
    now = {p.relative_to(out.local_dir).as_posix() for p in written}
    for rel in recorded:
        if rel not in now:
            out.remove(rel)
    return written


def write_id_list(path: str | Path, ids: NDArray[np.int64], inputs: list[tuple[int, str, str]]) -> Path:
    """A list of cell ids to leave out (`huggingface.drop_ids`), sorted, with the identity of every input file
    they refer to, (file index, path, checksum): an id is (input file, row), so the list is only valid for the
    inputs it was made from (tokenize checks them before using it)."""
    ids = np.unique(np.asarray(ids, dtype=np.int64))
    files = np.unique(decode_ids(ids)[0])
    known = {i: (p, c) for i, p, c in inputs}
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(
            f,
            ids=ids,
            file_index=files,
            path=np.array([known[int(i)][0] for i in files], dtype=str),
            checksum=np.array([known[int(i)][1] for i in files], dtype=str),
        )
    return Path(path)


def read_id_list(path: str | Path) -> tuple[NDArray[np.int64], list[tuple[int, str, str]]]:
    """(sorted ids, [(file index, path, checksum)]) of an id list; a file of another shape is a ValueError."""
    with np.load(path, allow_pickle=False) as z:
        try:
            ids, files, paths, sums = (z[k] for k in ("ids", "file_index", "path", "checksum"))
        except KeyError as exc:
            raise ValueError(f"{path}: not a cell id list (no {exc})") from None
    if ids.dtype != np.int64 or ids.ndim != 1 or np.any(ids[1:] <= ids[:-1]):
        raise ValueError(f"{path}: not a cell id list (ids must be sorted, unique int64)")
    return ids, list(zip(files.tolist(), paths.tolist(), sums.tolist(), strict=True))
