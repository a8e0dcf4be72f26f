"""Equal cells in recorded fingerprint files, found in bounded memory (shared by `cellcorpus dedup` and the
in-build drop of `dedup: {policy: drop}`).

Up to `PART_ROWS` records are compared at once; beyond that they are first spread over fingerprint-range
partition files on disk (like the shuffle's buckets), one partition in memory at a time. Files are tagged: tag 0
is the corpus examined, tag k the k-th other one. Within tag 0, the first of a group of equal cells is the one
with the smallest id (input file, then row): the others are its duplicates. Against tag k, every tag-0 cell whose
fingerprint tag k also holds is counted, with tag k's first such cell. Counts are per pair of inputs, each with
an example: the pair's first cell by id.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from cellcorpus.core.ids import decode_ids
from cellcorpus.core.partition import n_partitions, partition_slices
from cellcorpus.formats.fingerprints import read_fingerprints
from cellcorpus.io.paths import local_copy

__all__ = ["PART_ROWS", "Pairs", "Scan", "scan_fingerprints"]

PART_ROWS = 1 << 22  # records compared in memory at once (~130 MB with their sort)
_ROWS = np.dtype([("hi", "<u8"), ("lo", "<u8"), ("tag", "<i8"), ("id", "<i8")])  # tag 0: the corpus examined


class Pairs:
    """(input a, input b) -> [cells, example id a, example id b], added array-wise."""

    def __init__(self) -> None:
        self.by: dict[tuple[int, int], list[int]] = {}

    def add(self, ids_a: NDArray[np.int64], ids_b: NDArray[np.int64]) -> None:
        """Count cells `ids_a[i]` equal to `ids_b[i]`, per pair of their inputs."""
        if not len(ids_a):
            return
        fa, fb = decode_ids(ids_a)[0], decode_ids(ids_b)[0]
        order = np.lexsort((ids_a, fb, fa))  # within a pair of inputs, the example is its smallest id
        pairs = np.stack([fa[order], fb[order]], axis=1)
        uniq, first, counts = np.unique(pairs, axis=0, return_index=True, return_counts=True)
        for (a, b), k, n in zip(uniq.tolist(), order[first].tolist(), counts.tolist(), strict=True):
            entry = self.by.setdefault((a, b), [0, int(ids_a[k]), int(ids_b[k])])
            entry[0] += n
            if int(ids_a[k]) < entry[1]:  # an earlier partition's example was a later cell
                entry[1], entry[2] = int(ids_a[k]), int(ids_b[k])

    def rows(self, inputs_a: dict[int, str], inputs_b: dict[int, str]) -> list[dict[str, Any]]:
        """One row per pair of inputs (most cells first): inputs by path, cells, an example (input, row) of each."""
        out = []
        for (a, b), (n, ex_a, ex_b) in sorted(self.by.items(), key=lambda kv: (-kv[1][0], kv[0])):
            ra, rb = int(decode_ids(np.array([ex_a]))[1][0]), int(decode_ids(np.array([ex_b]))[1][0])
            out.append({"input": inputs_a.get(a, str(a)), "other_input": inputs_b.get(b, str(b)), "cells": n,
                        "example": [[inputs_a.get(a, str(a)), ra], [inputs_b.get(b, str(b)), rb]]})  # fmt: skip
        return out


@dataclass
class Scan:
    """What one scan found: tag 0's cells, its groups of equal cells and duplicates (`within`, per pair of inputs),
    its cells also in each other tag (`across[k - 1]`); with ids kept, `dropped[0]` the duplicates' ids (all but
    each group's first) and `dropped[k]` those of its cells tag k also holds."""

    n_other: int
    cells: int = 0
    groups: int = 0
    duplicate_cells: int = 0
    within: Pairs = field(default_factory=Pairs)
    across: list[Pairs] = field(default_factory=list)
    dropped: list[list[NDArray[np.int64]]] | None = None

    def ids(self, k: int = 0) -> NDArray[np.int64]:
        """The sorted ids of `dropped[k]`."""
        found = (self.dropped or [[]] * (k + 1))[k]
        return np.sort(np.concatenate(found)) if found else np.zeros(0, np.int64)


def scan_fingerprints(files: list[tuple[int, str]], total: int, n_other: int = 0, keep_ids: bool = True) -> Scan:
    """Scan fingerprint files `(tag, path or URL)` holding about `total` records (sizes the partitions: nothing
    is opened for it); `keep_ids`: gather the ids of the cells found (`Scan.dropped`)."""
    scan = Scan(n_other, across=[Pairs() for _ in range(n_other)])
    scan.dropped = [[] for _ in range(n_other + 1)] if keep_ids else None
    with tempfile.TemporaryDirectory(prefix="cellcorpus-dedup-") as tmp:
        for rows in _partitions(files, total, Path(tmp)):
            _fold(rows, scan)
    return scan


def _tagged(records: NDArray[Any], tag: int) -> NDArray[Any]:
    rows = np.empty(len(records), _ROWS)
    rows["hi"], rows["lo"], rows["id"], rows["tag"] = records["hi"], records["lo"], records["id"], tag
    return rows


def _partitions(files: list[tuple[int, str]], total: int, tmp: Path) -> Iterator[NDArray[Any]]:
    """All records at once (small corpora), or one fingerprint-range partition after another (files on disk)."""
    n_parts = n_partitions(total, PART_ROWS)
    if n_parts == 1:
        loaded = []
        for tag, f in files:
            with local_copy(f) as p:
                loaded.append(_tagged(read_fingerprints(p), tag))
        yield np.concatenate(loaded) if loaded else np.zeros(0, _ROWS)
        return
    paths = [tmp / f"{p}.rows" for p in range(n_parts)]
    handles = [open(p, "wb") for p in paths]  # noqa: SIM115 - closed below
    try:
        for tag, f in files:
            with local_copy(f) as p:
                rows = _tagged(read_fingerprints(p), tag)  # sorted by fingerprint: each partition is a run
            for k, (a, b) in enumerate(partition_slices(rows["hi"], n_parts)):
                rows[a:b].tofile(handles[k])
    finally:
        for h in handles:
            h.close()
    for path in paths:
        yield np.fromfile(path, dtype=_ROWS)


def _fold(rows: NDArray[Any], scan: Scan) -> None:
    """Fold one partition's records (any order) into the scan."""
    rows.sort(order=["hi", "lo", "tag", "id"])
    ours = rows[rows["tag"] == 0]
    scan.cells += len(ours)
    if len(ours) > 1:
        new = _group_starts(ours)
        first = np.maximum.accumulate(np.where(new, np.arange(len(ours)), 0))  # each row's group's first row
        dup = np.flatnonzero(~new)
        scan.duplicate_cells += len(dup)
        sizes = np.diff(np.append(np.flatnonzero(new), len(ours)))
        scan.groups += int(np.count_nonzero(sizes > 1))
        scan.within.add(ours["id"][first[dup]], ours["id"][dup])
        if scan.dropped is not None:
            scan.dropped[0].append(ours["id"][dup])
    for k in range(1, scan.n_other + 1):
        both = rows[(rows["tag"] == 0) | (rows["tag"] == k)]  # still sorted: a group's own cells come first
        if not len(both):
            continue
        new = _group_starts(both)
        group = np.cumsum(new) - 1
        starts = np.flatnonzero(new)
        n_ours = np.add.reduceat((both["tag"] == 0).astype(np.int64), starts)
        n_theirs = np.add.reduceat((both["tag"] == k).astype(np.int64), starts)
        mine = np.flatnonzero((both["tag"] == 0) & (n_theirs[group] > 0))
        partner = (starts + n_ours)[group[mine]]  # the other corpus' first cell of the group
        scan.across[k - 1].add(both["id"][mine], both["id"][partner])
        if scan.dropped is not None:
            scan.dropped[k].append(both["id"][mine])


def _group_starts(rows: NDArray[Any]) -> NDArray[np.bool_]:
    """True where a run of equal fingerprints starts, in records sorted by fingerprint."""
    new = np.ones(len(rows), bool)
    new[1:] = (rows["hi"][1:] != rows["hi"][:-1]) | (rows["lo"][1:] != rows["lo"][:-1])
    return new
