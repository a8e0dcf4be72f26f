"""`dedup: {policy: drop}`: cells recorded twice left out of the build that finds them (part of tokenize).

Every unit records its kept cells' fingerprints; once all units ran, one bounded-memory scan of those files
(formats/duplicates.py, the one `cellcorpus dedup` runs) finds the groups of equal cells, and every cell but each
group's first by id is left out while the parts become data files: a shuffle unit filters its bucket, an
unshuffled part holding a duplicate is rewritten without it (its fused MDS scratch is discarded: the mds stage
converts that data file), and the unit's fingerprint file loses it too, so the finished corpus holds each cell
once. An append scans the finished corpus' fingerprints too: a new cell equal to a finished one is dropped (the
finished one has the smaller id). The ids left out and the counts per unit and split are saved once in the parts
folder, so an interrupted finalize resumes with the same ones.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from cellcorpus.config import config_hash
from cellcorpus.core.ids import decode_ids, in_sorted, make_ids
from cellcorpus.formats.arrow import read_arrow
from cellcorpus.formats.duplicates import scan_fingerprints
from cellcorpus.formats.fingerprints import RECORD_DTYPE, read_fingerprints, unit_file, write_unit_fingerprints
from cellcorpus.io.atomic import atomic_path, write_json_atomic
from cellcorpus.layout import SPLITS
from cellcorpus.manifest import UnitResult
from cellcorpus.sources.base import InputFile
from cellcorpus.stages.base import WorkUnit

__all__ = ["Dropped", "DUPLICATES_KEY", "find_duplicates", "load_ids"]

DUPLICATES_KEY = "filtered_duplicates"  # cells left out as copies of an earlier cell (by id)
_IDS = "duplicates.npy"
_RECORD = "duplicates.json"


@dataclass(frozen=True)
class Dropped:
    """The duplicates this build leaves out: their sorted ids (`path`, np.save) and what the manifest records
    (cells, groups of equal cells, pairs of inputs with an example)."""

    path: str
    record: dict[str, Any]


def find_duplicates(
    parts_dir: str,
    units: list[WorkUnit],
    results: list[UnitResult],
    inputs: list[InputFile],
    identity: str,
    finished: Sequence[tuple[str, int]] = (),
) -> Dropped:
    """Scan this build's unit fingerprints (and an append's `finished` ones: (path or URL, bytes)), save the ids
    to leave out and update `results` in place: per unit `filtered_duplicates`, fewer `written_<split>`, each
    split part's `n_cells`. `identity`: this build's (a saved scan of another one is not reused)."""
    folder = Path(parts_dir)
    key = config_hash(identity, [u.unit_id for u in units])
    saved = folder / _RECORD
    if saved.exists() and (record := _read(saved)).get("key") == key:
        per_unit = record.pop("per_unit")
    else:
        files = [(0, str(unit_file(folder, u.unit_id))) for u in units] + [(0, p) for p, _ in finished]
        total = sum(os.path.getsize(f) for _, f in files[: len(units)]) + sum(b for _, b in finished)
        scan = scan_fingerprints(files, total // RECORD_DTYPE.itemsize)
        ids = scan.ids(0)
        first_new = min((u.file_index for u in units), default=0)
        ids = ids[decode_ids(ids)[0] >= first_new]  # an append drops its own cells, never a finished one
        with atomic_path(folder / _IDS) as tmp, open(tmp, "wb") as f:
            np.save(f, ids, allow_pickle=False)
        paths = {f.file_index: f.rel_path for f in inputs}
        per_unit = _per_unit(folder, units, ids)
        record = {"cells": len(ids), "groups": scan.groups, "pairs": scan.within.rows(paths, paths)}
        write_json_atomic(saved, {**record, "key": key, "per_unit": per_unit})
    # again on a resumed finalize (a kill may have come half way): filtering what was filtered changes nothing
    _filter_fingerprints(folder, units, load_ids(str(folder / _IDS)), per_unit)
    record.pop("key", None)
    for unit, res in zip(units, results, strict=True):
        counts = per_unit.get(unit.unit_id, {})
        res.counts[DUPLICATES_KEY] = sum(counts.values())
        for out in res.outputs:
            k = counts.get(out["split"], 0)
            res.counts[f"written_{out['split']}"] -= k
            out["n_cells"] -= k
            out["dropped"] = k  # (an unshuffled part holding duplicates is rewritten, not moved)
    return Dropped(str(folder / _IDS), record)


def load_ids(path: str) -> NDArray[np.int64]:
    """The saved ids (sorted)."""
    ids: NDArray[np.int64] = np.load(path, allow_pickle=False)
    return ids


def _read(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def _per_unit(folder: Path, units: list[WorkUnit], ids: NDArray[np.int64]) -> dict[str, dict[str, int]]:
    """Unit id -> split -> its cells left out, from the ids each split part holds (parts of units with none are
    not opened)."""
    starts = np.array([int(make_ids(u.file_index, np.array([u.row_start]))[0]) for u in units], np.int64)
    order = np.argsort(starts, kind="stable")
    pos = np.searchsorted(starts[order], ids, side="right") - 1  # each dropped id's unit, in id order (sorted ids)
    found, first = np.unique(pos, return_index=True)
    out: dict[str, dict[str, int]] = {}
    for k, a, b in zip(found.tolist(), first.tolist(), [*first[1:].tolist(), len(ids)], strict=True):
        unit, mine = units[int(order[k])], ids[a:b]
        counts = {}
        for split in SPLITS:
            held = read_arrow(folder / split / f"{unit.unit_id}.arrow").column("id").to_numpy()
            counts[split] = int(np.count_nonzero(in_sorted(held, mine)))
        out[unit.unit_id] = counts
    return out


def _filter_fingerprints(
    folder: Path, units: list[WorkUnit], ids: NDArray[np.int64], per_unit: dict[str, dict[str, int]]
) -> None:
    """Units holding duplicates lose them from their fingerprint files too (the corpus records what it holds)."""
    for unit in units:
        if unit.unit_id in per_unit:
            path = unit_file(folder, unit.unit_id)
            records = read_fingerprints(path)
            kept = records[~in_sorted(records["id"], ids)]
            write_unit_fingerprints(folder, unit.unit_id, kept[["hi", "lo"]], kept["id"])
