"""`cellcorpus dedup`: cells recorded twice, within one corpus and against other finished corpora.

Reads only the content fingerprints tokenize recorded (`huggingface.fingerprints: true`; core/fingerprint.py),
never the tokens, in bounded memory (formats/duplicates.py). Within the corpus, the first of a group of equal
cells is the one with the smallest id (input file, then row): the others are its duplicates. Against another
corpus, every cell of this one whose fingerprint the other also holds is counted, with the other's first such
cell. Counts are per pair of inputs, each with an example (input, row) of both cells: the pair's first cell by id.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cellcorpus.config import Config, load_config
from cellcorpus.errors import ConfigError
from cellcorpus.formats.duplicates import scan_fingerprints
from cellcorpus.formats.fingerprints import RECORD_DTYPE, write_id_list
from cellcorpus.io.atomic import write_json_atomic
from cellcorpus.layout import DEDUP_RECORD, REPORT_DIR, Layout
from cellcorpus.manifest import TokenizeManifest, read_manifest

__all__ = ["DedupReport", "run_dedup", "DEDUP_RECORD", "DUPLICATE_IDS"]

DUPLICATE_IDS = "duplicate_ids.npz"  # beside it: the duplicates' ids (all but each group's first cell)


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


def _records(corpora: list[_Corpus]) -> tuple[list[tuple[int, str]], int]:
    """Every fingerprint file with its corpus' tag (0: this corpus), and about how many records they hold (from
    the manifests' sizes: no file is opened, a remote one is fetched once, when it is read)."""
    return [(tag, f) for tag, c in enumerate(corpora) for f in c.files], sum(c.records for c in corpora)


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
    files, total = _records(corpora)
    scan = scan_fingerprints(files, total, len(others), keep_ids=write)
    report = DedupReport(scan.cells, scan.groups, scan.duplicate_cells)
    report.pairs = scan.within.rows(corpora[0].inputs, corpora[0].inputs)
    for (_, name), pairs, corpus in zip(others, scan.across, corpora[1:], strict=True):
        found = pairs.rows(corpora[0].inputs, corpus.inputs)
        report.against[name] = {"cells_also_there": sum(p["cells"] for p in found), "pairs": found}
    root = Layout.of(main_cfg).merged_root()
    if write:
        folder = root.local_dir / REPORT_DIR
        lists = [(DUPLICATE_IDS, "duplicates")] + [(_also_in(name), f"also in {name}") for _, name in others]
        for k, (name, what) in enumerate(lists):
            write_id_list(folder / name, scan.ids(k), corpora[0].identity)
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
