"""`cellcorpus dedup`: cells recorded twice, within one corpus and against other finished corpora.

Reads only the content fingerprints tokenize recorded (`huggingface.fingerprints: true`; core/fingerprint.py),
never the tokens. In bounded memory whatever the corpora's size: up to `PART_ROWS` records are compared at
once; beyond that they are first spread over fingerprint-range partition files on disk (like the shuffle's
buckets), one partition in memory at a time. Within the corpus, the first of a group of equal cells is the one
with the smallest id (input file, then row): the others are its duplicates. Against another corpus, every
cell of this one whose fingerprint the other also holds is counted, with the other's first such cell.
Counts are per pair of inputs, each with an example (input, row) of both cells: the pair's first cell by id.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from cellcorpus.config import Config, load_config
from cellcorpus.core.ids import decode_ids
from cellcorpus.core.partition import n_partitions, partition_slices
from cellcorpus.errors import ConfigError
from cellcorpus.formats.fingerprints import RECORD_DTYPE, read_fingerprints, write_id_list
from cellcorpus.io.atomic import write_json_atomic
from cellcorpus.io.paths import local_copy
from cellcorpus.layout import DEDUP_RECORD, REPORT_DIR, Layout
from cellcorpus.manifest import TokenizeManifest, read_manifest

__all__ = ["DedupReport", "run_dedup", "PART_ROWS", "DEDUP_RECORD", "DUPLICATE_IDS"]

PART_ROWS = 1 << 22  # records compared in memory at once (~130 MB with their sort)
DUPLICATE_IDS = "duplicate_ids.npz"  # beside it: the duplicates' ids (all but each group's first cell)
_ROWS = np.dtype([("hi", "<u8"), ("lo", "<u8"), ("tag", "<i8"), ("id", "<i8")])  # tag 0: this corpus


@dataclass
class _Corpus:
    name: str
    files: list[str]  # fingerprint files (paths or URLs)
    records: int  # about how many records they hold (from their recorded sizes: sizes partitions, nothing else)
    identity: list[tuple[int, str, str]]  # (file index, path, checksum) of every input
    config_hash: str  # the build the fingerprints belong to (the report shows a dedup.json of this build only)

    @property
    def inputs(self) -> dict[int, str]:
        """File index -> input path (relative, as its manifest records it)."""
        return {i: p for i, p, _ in self.identity}


@dataclass
class DedupReport:
    """What `cellcorpus dedup` found. `pairs`: per (input, input) pair, cells and one example of each side."""

    cells: int = 0
    groups: int = 0  # fingerprints held by two or more cells of this corpus
    duplicate_cells: int = 0  # cells beyond the first of each group
    pairs: list[dict[str, Any]] = field(default_factory=list)
    against: dict[str, dict[str, Any]] = field(default_factory=dict)  # other corpus -> cells also there, pairs
    # what each written id list holds -> its path under the merged root (for `huggingface.drop_ids`)
    id_lists: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """The report as written to dedup.json."""
        return {
            "cells": self.cells,
            "groups": self.groups,
            "duplicate_cells": self.duplicate_cells,
            "pairs": self.pairs,
            "against": self.against,
            "id_lists": self.id_lists,
        }


def _corpus(cfg: Config, name: str) -> _Corpus:
    hf = cfg.need("huggingface")
    out = Layout.of(cfg).merged_root()
    manifest = read_manifest(out, "manifest.json", TokenizeManifest)
    if manifest is None:
        raise ConfigError(f"{name}: no finished corpus in {hf.merged_dataset_root}", hint="run `cellcorpus run` first")
    if manifest.fingerprints is None:
        raise ConfigError(
            f"{name}: its cells' fingerprints were not recorded ({hf.merged_dataset_root})",
            hint="set huggingface.fingerprints: true and run `cellcorpus tokenize` again",
        )
    identity = [(i.file_index, i.path, i.checksum) for i in manifest.inputs]
    files = [out.url(r.path) for r in manifest.fingerprints]
    records = sum(r.bytes for r in manifest.fingerprints) // RECORD_DTYPE.itemsize  # (+ a header per file)
    return _Corpus(name, files, records, identity, manifest.config_hash)


class _Pairs:
    """(input a, input b) -> [cells, example id a, example id b], added array-wise."""

    def __init__(self) -> None:
        self.by: dict[tuple[int, int], list[int]] = {}

    def add(self, ids_a: NDArray[np.int64], ids_b: NDArray[np.int64]) -> None:
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
        out = []
        for (a, b), (n, ex_a, ex_b) in sorted(self.by.items(), key=lambda kv: (-kv[1][0], kv[0])):
            ra, rb = int(decode_ids(np.array([ex_a]))[1][0]), int(decode_ids(np.array([ex_b]))[1][0])
            out.append({"input": inputs_a.get(a, str(a)), "other_input": inputs_b.get(b, str(b)), "cells": n,
                        "example": [[inputs_a.get(a, str(a)), ra], [inputs_b.get(b, str(b)), rb]]})  # fmt: skip
        return out


def _records(corpora: list[_Corpus]) -> tuple[list[tuple[int, str]], int]:
    """Every fingerprint file with its corpus' tag (0: this corpus), and about how many records they hold (from
    the manifests' sizes: no file is opened, a remote one is fetched once, when it is read)."""
    return [(tag, f) for tag, c in enumerate(corpora) for f in c.files], sum(c.records for c in corpora)


def _tagged(records: NDArray[Any], tag: int) -> NDArray[Any]:
    rows = np.empty(len(records), _ROWS)
    rows["hi"], rows["lo"], rows["id"], rows["tag"] = records["hi"], records["lo"], records["id"], tag
    return rows


def _partitions(files: list[tuple[int, str]], total: int, tmp: Path) -> list[NDArray[Any]] | list[Path]:
    """All records in memory (small corpora), or the paths of fingerprint-range partition files."""
    n_parts = n_partitions(total, PART_ROWS)
    if n_parts == 1:
        loaded = []
        for tag, f in files:
            with local_copy(f) as p:
                loaded.append(_tagged(read_fingerprints(p), tag))
        return [np.concatenate(loaded) if loaded else np.zeros(0, _ROWS)]
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
    return paths


def _scan(
    rows: NDArray[Any], n_other: int, report: DedupReport, within: _Pairs, across: list[_Pairs],
    dropped: list[list[NDArray[np.int64]]] | None = None,
) -> None:  # fmt: skip
    """Fold one partition's records (any order) into the report; `dropped[0]` gathers the ids of duplicates
    within the corpus, `dropped[k]` those of its cells also in the k-th other corpus."""
    rows.sort(order=["hi", "lo", "tag", "id"])
    ours = rows[rows["tag"] == 0]
    report.cells += len(ours)
    if len(ours) > 1:
        new = _group_starts(ours)
        first = np.maximum.accumulate(np.where(new, np.arange(len(ours)), 0))  # each row's group's first row
        dup = np.flatnonzero(~new)
        report.duplicate_cells += len(dup)
        sizes = np.diff(np.append(np.flatnonzero(new), len(ours)))
        report.groups += int(np.count_nonzero(sizes > 1))
        within.add(ours["id"][first[dup]], ours["id"][dup])
        if dropped is not None:
            dropped[0].append(ours["id"][dup])
    for k in range(1, n_other + 1):
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
        across[k - 1].add(both["id"][mine], both["id"][partner])
        if dropped is not None:
            dropped[k].append(both["id"][mine])


def _group_starts(rows: NDArray[Any]) -> NDArray[np.bool_]:
    """True where a run of equal fingerprints starts, in records sorted by fingerprint."""
    new = np.ones(len(rows), bool)
    new[1:] = (rows["hi"][1:] != rows["hi"][:-1]) | (rows["lo"][1:] != rows["lo"][:-1])
    return new


def run_dedup(
    cfg: Config | str | Path,
    against: list[Config | str | Path] | None = None,
    *,
    names: list[str] | None = None,
    write: bool = True,
) -> DedupReport:
    """Duplicate cells of the corpus `cfg`, and its cells also in each corpus of `against` (configs or paths;
    named by `names`, else by each file's stem). Written to `<merged_dataset_root>/report/dedup.json` unless
    `write=False`."""
    main_cfg = cfg if isinstance(cfg, Config) else load_config(cfg)
    others = [
        (c if isinstance(c, Config) else load_config(c), names[k] if names else _name(c, k))
        for k, c in enumerate(against or [])
    ]
    corpora = [_corpus(main_cfg, _name(cfg, -1))] + [_corpus(c, name) for c, name in others]
    for other in corpora[1:]:
        if set(other.files) & set(corpora[0].files):  # every cell would be "also there"
            raise ConfigError(f"dedup --against {other.name}: that is this corpus itself")
    report = DedupReport()
    within, across = _Pairs(), [_Pairs() for _ in others]
    dropped: list[list[NDArray[np.int64]]] | None = [[] for _ in corpora] if write else None  # the id lists
    files, total = _records(corpora)
    root = Layout.of(main_cfg).merged_root()
    with tempfile.TemporaryDirectory(prefix="cellcorpus-dedup-") as tmp:
        for part in _partitions(files, total, Path(tmp)):
            rows = part if isinstance(part, np.ndarray) else np.fromfile(part, dtype=_ROWS)
            _scan(rows, len(others), report, within, across, dropped)
    report.pairs = within.rows(corpora[0].inputs, corpora[0].inputs)
    for (_, name), pairs, corpus in zip(others, across, corpora[1:], strict=True):
        found = pairs.rows(corpora[0].inputs, corpus.inputs)
        report.against[name] = {"cells_also_there": sum(p["cells"] for p in found), "pairs": found}
    if dropped is not None:
        folder = root.local_dir / REPORT_DIR
        lists = [(DUPLICATE_IDS, "duplicates")] + [(_also_in(name), f"also in {name}") for _, name in others]
        for (name, what), ids in zip(lists, dropped, strict=True):
            listed = np.concatenate(ids) if ids else np.zeros(0, np.int64)
            write_id_list(folder / name, listed, corpora[0].identity)
            report.id_lists[what] = f"{REPORT_DIR}/{name}"
            root.publish(folder / name)
        write_json_atomic(folder / DEDUP_RECORD, {"config_hash": corpora[0].config_hash, **report.as_dict()})
        root.publish(folder / DEDUP_RECORD)
    return report


def _also_in(name: str) -> str:
    return "also_in_" + "".join(c if c.isalnum() or c in "-_" else "_" for c in name) + ".npz"


def _name(c: Config | str | Path, k: int) -> str:
    if isinstance(c, Config):
        return "this corpus" if k < 0 else f"corpus {k + 1}"
    return Path(c).stem
