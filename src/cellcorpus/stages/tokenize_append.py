"""`--append`: new input files added to a finished corpus, the finished files left as they are (part of tokenize).

A new scBaseCount release or one more Census chunk adds input files. Rebuilding would renumber the inputs (a
cell's id is (input's position, row)), so held-out cells could change and every byte be rewritten. Appending
keeps every finished input at its recorded number and gives the new files the next ones; only they are
tokenized, into data files of their own (`data-append<g>-<i>-of-<n>.arrow`, g counting the appends), and the datasets'
state.json, the manifest and (by the MDS stage, which redoes only data files it has not recorded) the MDS index
are merged to cover both. Old cells keep their split: `key: id` ids do not change, a content key does not
depend on files, and a group split keeps every finished group where it is (new groups are chosen among
themselves by the same rule).

While an append runs, `append.json` beside the manifest names the finished build it extends, so an interrupted
append resumes as one (the old manifest stays the record of the finished part until the merged one replaces it).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any

from cellcorpus.errors import ConfigError
from cellcorpus.formats.arrow import data_file_glob
from cellcorpus.io.atomic import write_json_atomic
from cellcorpus.io.paths import Publisher, filesystem
from cellcorpus.layout import APPEND_RECORD, MANIFEST, SPLITS
from cellcorpus.manifest import TokenizeManifest, read_manifest
from cellcorpus.sources.base import InputFile

__all__ = ["AppendBase", "resolve_inputs", "merge_counts", "abandon_append"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AppendBase:
    """The finished build an append extends, and the inputs: the finished ones at their recorded numbers (first),
    then the new ones numbered after them (in sorted order)."""

    previous: TokenizeManifest
    inputs: list[InputFile]
    new: list[InputFile]
    generation: int  # 1 for the first append to a build, 2 for the next, ...

    def records(self, split: str) -> list[dict[str, Any]]:
        """The finished data files of `split`, as the previous manifest lists them."""
        return [r.model_dump() for r in self.previous.splits.get(split, [])]

    def start(self, out: Publisher) -> None:
        """Record the append as under way (before the datasets' markers go): a rerun resumes it as an append."""
        path = out.local_dir / APPEND_RECORD
        write_json_atomic(
            path,
            {
                "base": self.previous.config_hash,
                "generation": self.generation,
                "inputs": [f.rel_path for f in self.new],
            },
        )
        out.publish(path)

    def merged(self, body: dict[str, Any]) -> dict[str, Any]:
        """The manifest body of the appended files (`body`) merged with the finished build's: every input, unit,
        data file, fingerprint file and count; `appends` lists each append (its inputs and cells)."""
        prev = self.previous.model_dump(mode="json")
        out = dict(body)
        out["units"] = prev["units"] + body["units"]
        out["splits"] = {s: prev["splits"].get(s, []) + body["splits"].get(s, []) for s in SPLITS}
        out["totals"] = merge_counts(prev["totals"], body["totals"])
        for key in ("held_out_groups", "non_integer_values"):
            merged = merge_counts(prev.get(key) or {}, body.get(key) or {})
            if merged or key in body:
                out[key] = merged
        if prev.get("duplicates_dropped") or body.get("duplicates_dropped"):
            a, b = prev.get("duplicates_dropped") or {}, body.get("duplicates_dropped") or {}
            out["duplicates_dropped"] = {
                "cells": a.get("cells", 0) + b.get("cells", 0),
                "groups": a.get("groups", 0) + b.get("groups", 0),
                "pairs": a.get("pairs", []) + b.get("pairs", []),
            }
        if prev.get("fingerprints") or body.get("fingerprints"):
            out["fingerprints"] = (prev.get("fingerprints") or []) + (body.get("fingerprints") or [])
        written = {k: v for k, v in body["totals"].items() if k in ("cells_read", "written_train", "written_valid")}
        this = {"generation": self.generation, "inputs": [f.rel_path for f in self.new], **written}
        out["appends"] = (prev.get("appends") or []) + [this]
        return out


def abandon_append(out: Publisher) -> None:
    """An unfinished append's data files (`data-append<g>-...`, g as its record names it) and its record, removed
    before a rebuild: the rebuild would leave them unlisted. Nothing else is touched."""
    pending = out.read_json(APPEND_RECORD)
    if not isinstance(pending, dict):
        return
    generation = int(pending.get("generation", 0))
    for split in SPLITS if generation > 0 else ():
        fs, folder = filesystem(out.url(f"{split}.dataset"))
        for path in fs.glob(f"{folder}/{data_file_glob(generation)}"):
            out.remove(f"{split}.dataset/{path.rsplit('/', 1)[-1]}")
    out.remove(APPEND_RECORD)


def merge_counts(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    """Key-wise sums (keys of either)."""
    return {k: a.get(k, 0) + b.get(k, 0) for k in {**a, **b}}


def resolve_inputs(
    out: Publisher, inputs: list[InputFile], settings_hash: str, stage_hash: str, markers: list[str], append: bool
) -> tuple[list[InputFile], AppendBase | None]:
    """The inputs this tokenize run numbers its cells by, and the build it appends to (None: build as usual).

    A finished build of the same settings keeps its inputs' recorded numbers (an appended corpus' new files may
    sort before old ones). With `append` and a finished build of these settings (or an append of it under way),
    new files are appended; finished inputs removed or changed are a ConfigError naming them. Without `append`,
    grown inputs rebuild everything, as any change of inputs does (a warning says `--append` would not).
    """
    previous = read_manifest(out, MANIFEST, TokenizeManifest)
    if previous is None or previous.settings_hash != settings_hash:
        return inputs, None  # nothing finished of these settings (the stage refuses other settings itself)
    complete = all(out.exists(m) for m in markers)
    pending = out.read_json(APPEND_RECORD) if append else None
    resumed = isinstance(pending, dict) and pending.get("base") == previous.config_hash
    if not (complete or resumed):
        if append:
            log.warning("--append: %s holds no finished corpus (a rebuild was interrupted): building it", out.root)
        return inputs, None
    current = {f.rel_path: f for f in inputs}
    finished = {r.path: r for r in previous.inputs}
    removed = [p for p in finished if p not in current]
    changed = [
        p
        for p, r in finished.items()
        if p in current and (current[p].n_bytes, current[p].checksum) != (r.bytes, r.checksum)
    ]
    added = [f for f in inputs if f.rel_path not in finished]
    kept = [replace(current[r.path], file_index=r.file_index) for r in previous.inputs if r.path in current]
    if previous.config_hash == stage_hash and not (removed or changed or added):
        return kept, None  # the finished build itself: its own numbering (the stage skips it)
    if not append:
        if added and not (removed or changed):
            log.warning(
                "%d input file(s) added since the finished corpus: rebuilding all of it (`--append` would tokenize "
                "only the new files and leave the finished ones as they are)",
                len(added),
            )
        return inputs, None
    if removed or changed:
        raise ConfigError(
            "--append: finished input files "
            + "; ".join(
                f"{what}: {', '.join(paths[:5])}" + (f" and {len(paths) - 5} more" if len(paths) > 5 else "")
                for what, paths in (("removed", removed), ("changed", changed))
                if paths
            )
            + f" (the corpus at {out.root} holds their cells)",
            hint="restore them to append, or rerun without --append to rebuild every cell from the inputs as they are",
        )
    first = max((r.file_index for r in previous.inputs), default=-1) + 1
    new = [replace(f, file_index=first + k) for k, f in enumerate(added)]
    generation = int(pending["generation"]) if resumed else len(previous.appends or []) + 1
    return kept + new, AppendBase(previous, kept + new, new, generation)
