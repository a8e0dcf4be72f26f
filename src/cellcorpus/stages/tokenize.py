"""`cellcorpus tokenize`: input files -> tokenized cells -> HF Arrow `train.dataset` / `valid.dataset`.

plan: discover inputs, cut them into (file, row range) units of `unit_cells`.
unit: read rows, filter, tokenize (vectorised), join metadata, hash-split, write one Arrow part per
      split (sorted by shuffle key when shuffling, with per-bucket row bounds recorded).
finalize: unshuffled -> parts become the data files in unit order; shuffled -> one shuffle unit per
      bucket gathers its rows from every part (bounded memory) and sorts them (stages/tokenize_finalize.py).
"""

from __future__ import annotations

import functools
import logging
import os
import tempfile
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from numpy.typing import NDArray

from cellcorpus.config import CELL_HASH, HF_LOCATION_KEYS, Config, HuggingfaceConfig, config_hash
from cellcorpus.core.fingerprint import cell_fingerprints, hex_fingerprints
from cellcorpus.core.genemap import merge_duplicate_tokens
from cellcorpus.core.ids import in_sorted, make_ids
from cellcorpus.core.shuffle import n_buckets_for, order_by_bucket
from cellcorpus.core.split import assign_valid, choose_groups, equal_pairs, key_ids, shuffle_keys
from cellcorpus.core.tokenize import Ragged, columns_ascending, row_stats, scan_counts, tokenize_csr
from cellcorpus.encodings import UnitInput, column_specs, encoding_for
from cellcorpus.errors import ConfigError, InputError
from cellcorpus.exec.runner import ExecutorSpec, Reporter
from cellcorpus.formats.arrow import cell_schema, cells_table, compact_part, read_arrow, write_stream
from cellcorpus.formats.fingerprints import publish_fingerprints, read_id_list, write_unit_fingerprints
from cellcorpus.formats.shuffle_plan import write_part_bounds
from cellcorpus.io.atomic import remove_temporaries, write_json_atomic
from cellcorpus.io.join_index import JoinIndex, build_join_index, is_large_table
from cellcorpus.io.owned import claim_dir, remove_owned
from cellcorpus.io.paths import Publisher, is_url
from cellcorpus.io.tables import as_strings, load_table, lookup
from cellcorpus.io.vocab import load_vocab, vocab_lookup
from cellcorpus.layout import APPEND_RECORD, MANIFEST, OUTPUT_RECORDS, SPLITS
from cellcorpus.manifest import Ledger, TokenizeManifest, UnitResult, file_checksum, output_record, read_manifest
from cellcorpus.plan import Plan, plan_for
from cellcorpus.sources.base import InputFile, RawBlock
from cellcorpus.sources.inputs import discover_and_inspect, gene_mapping, input_format, obs_index_column
from cellcorpus.stages.base import (
    FusedExport,
    StageRun,
    StageSummary,
    WorkUnit,
    locked,
    row_units,
    run_stage,
    warm_up_unless_complete,
)
from cellcorpus.stages.preflight import check_renames, preflight
from cellcorpus.stages.tokenize_append import AppendBase, abandon_append, merge_counts, resolve_inputs
from cellcorpus.stages.tokenize_dedup import DUPLICATES_KEY, find_duplicates
from cellcorpus.stages.tokenize_finalize import TokenizeContext, finalize_splits
from cellcorpus.stages.tokenize_keys import check_unique_keys, write_unit_keys

__all__ = ["TokenizeContext", "plan_tokenize", "tokenize_unit", "run_tokenize", "tokenize_in_memory"]

log = logging.getLogger(__name__)

DROP_KEY = "filtered_listed_ids"  # counted only when `huggingface.drop_ids` lists cells to leave out
COUNT_KEYS = (
    "cells_read",
    "filtered_obs_filter",
    "filtered_min_genes",
    "filtered_min_counts",
    "filtered_min_vocab_genes",
    "written_train",
    "written_valid",
    "explicit_zeros_dropped",
    "oov_entries_dropped",
)


# ---- plan ---------------------------------------------------------------------------------------
def plan_tokenize(hf: HuggingfaceConfig, inputs: list[InputFile]) -> list[WorkUnit]:
    """(file, row range) units of at most `unit_cells` rows, sorted by file then row."""
    return row_units(inputs, hf.unit_cells)


# ---- unit ---------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=8)
def _join_index(folder: str) -> JoinIndex:
    return JoinIndex(folder)


def join_index_dirs(hf: HuggingfaceConfig, settings: dict[str, Any], joins: Path) -> tuple[str | None, ...]:
    """Where each join table's on-disk index goes under `joins` (None: a table small enough to load whole),
    named by the table's content, key and columns (`settings`: the work settings, whose join paths are
    checksums)."""
    out: list[str | None] = []
    for join, recorded in zip(hf.additional_metadata_info, settings["additional_metadata_info"], strict=True):
        large = is_large_table(join.path)
        out.append(str(joins / config_hash(recorded)[:16]) if large else None)
    return tuple(out)


class _Columns:
    """A unit's named columns as strings: obs columns first, then joined columns, joins applied in order.

    A name is looked up in obs, else among the columns earlier joins brought, so an obs_filter or a join key
    may be a joined column (e.g. the Tahoe release's `pass_filter`, from its obs_metadata table).
    """

    def __init__(self, block: RawBlock, hf: HuggingfaceConfig, join_indexes: tuple[str | None, ...] = ()) -> None:
        self._obs = block.obs
        self._values: dict[str, np.ndarray] = {}
        self._joined: dict[str, np.ndarray] = {}
        for i, join in enumerate(hf.additional_metadata_info):
            keys = self[join.merge_keys.adata_key]
            folder = join_indexes[i] if i < len(join_indexes) else None
            if folder is not None:  # a large table: its on-disk index, looked up for this unit's keys only
                joined = _join_index(folder).lookup(keys)
            else:
                index, cols = load_table(join.path, join.merge_keys.metadata_key, join.columns)
                joined = lookup(index, cols, keys)
            for name, values in joined.items():
                self._joined.setdefault(name, values)

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self._values:
            if name in self._obs:
                self._values[name] = as_strings(self._obs[name])
            elif name in self._joined:
                self._values[name] = self._joined[name]
            else:
                raise InputError(f"no obs or joined column '{name}'")
        return self._values[name]


def _metadata(columns: _Columns, ctx: TokenizeContext) -> dict[str, np.ndarray]:
    """Output metadata in seed order (obs columns, obs index, joined columns), renamed as configured."""
    hf = ctx.hf
    out: dict[str, np.ndarray] = {}
    for name in hf.obs_metadata_columns:
        out[name] = columns["index" if name == ctx.index_column else name]
    if ctx.index_column is not None and ctx.index_column not in out:
        out[ctx.index_column] = columns["index"]
    for join in hf.additional_metadata_info:
        for name in join.columns:
            out.setdefault(name, columns[name])
    return {hf.rename_columns.get(k, k): v for k, v in out.items()}


def _held_out_groups(hf: HuggingfaceConfig, sizes: dict[str, int], notes: list[str]) -> tuple[str, ...]:
    """The groups of `split_parameters.by` valid holds whole (sizes: input cells per group, before filters);
    a note when one group alone exceeds the valid fraction, or when whole groups miss it by more than 20%."""
    sp = hf.split_parameters
    chosen = choose_groups(sizes, sp.test_size, sp.seed)
    total = sum(sizes.values())
    target = sp.test_size * total
    if sizes and target > 0:
        big, n_big = max(sizes.items(), key=lambda kv: (kv[1], kv[0]))
        if n_big > target:
            notes.append(
                f"split_parameters.by: group {sp.by}={big!r} holds {n_big:,} cells, more than the valid fraction "
                f"({target:,.0f} of {total:,}): the split cannot follow test_size closely"
            )
        got = sum(sizes[g] for g in chosen)
        if abs(got - target) > 0.2 * target:
            notes.append(
                f"split_parameters.by: valid holds {len(chosen)} whole group(s) of {got:,} input cells "
                f"({got / total:.2%}); test_size {sp.test_size} cannot be met within ±20% by whole groups"
            )
    return tuple(chosen)


def _key_columns(columns: _Columns, hf: HuggingfaceConfig, unit: WorkUnit) -> list[np.ndarray] | None:
    """Every row's values of the `split_parameters.key` columns; None for the default `id` key."""
    if hf.split_parameters.key == "id":
        return None
    try:
        return [columns[name] for name in hf.split_parameters.key]
    except InputError as exc:
        raise InputError(f"{unit.path}: huggingface.split_parameters.key: {exc}") from None


def _split_key(values: list[np.ndarray], rows: np.ndarray, hf: HuggingfaceConfig, unit: WorkUnit) -> np.ndarray:
    """The kept rows' content keys (their key values hashed); two kept rows with the same values are an error
    naming both (the same rule across units: tokenize_keys), a mere hash collision is not."""
    kept = [v[rows] for v in values]
    try:
        hashed = key_ids(kept)
    except ValueError as exc:
        raise InputError(f"{unit.path}: huggingface.split_parameters.key: {exc}") from None
    for a, b in equal_pairs(hashed).tolist():
        if all(v[a] == v[b] for v in kept):
            shown = ", ".join(f"{name}={v[a]!r}" for name, v in zip(hf.split_parameters.key, kept, strict=True))
            raise InputError(
                f"{unit.path}: huggingface.split_parameters.key does not identify a cell: rows "
                f"{unit.row_start + rows[a]} and {unit.row_start + rows[b]} both have {shown}",
                hint="add a column to the key (e.g. the sample or plate), or use key: id",
            )
    return hashed


def _check_duplicate_genes(gene_map: np.ndarray, var_ids: np.ndarray, path: str) -> None:
    in_vocab = gene_map[gene_map >= 0]
    if len(np.unique(in_vocab)) != len(in_vocab):
        uniq, counts = np.unique(in_vocab, return_counts=True)
        dup_tokens = set(uniq[counts > 1].tolist())
        names = sorted({str(v) for v, t in zip(var_ids, gene_map, strict=True) if t in dup_tokens})[:5]
        raise InputError(f"{path}: duplicated gene ids map to the same token: {', '.join(names)}")


def dropped_ids(paths: tuple[str, ...]) -> NDArray[np.int64]:
    """The sorted union of the id lists (read once per worker process, again when a list changes)."""
    return _dropped_ids(tuple((p, os.stat(p).st_mtime_ns) for p in paths))


@functools.lru_cache(maxsize=4)
def _dropped_ids(stamped: tuple[tuple[str, int], ...]) -> NDArray[np.int64]:
    return np.unique(np.concatenate([read_id_list(p)[0] for p, _ in stamped] or [np.zeros(0, np.int64)]))


def check_id_lists(paths: list[str], inputs: list[InputFile]) -> None:
    """Every `drop_ids` list was made from these inputs: each input file it names is the same file (path and
    checksum) at the same position; otherwise a ConfigError naming the list and the file."""
    current = {f.file_index: (f.rel_path, f.checksum) for f in inputs}
    for path in paths:
        try:
            _, files = read_id_list(path)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"huggingface.drop_ids: {path}: {exc}") from None
        for index, rel, checksum in files:
            if current.get(index) != (rel, checksum):
                now = current.get(index, ("no such input", ""))[0]
                raise ConfigError(
                    f"huggingface.drop_ids: {path} was made from other inputs: input {index} was {rel}, now {now}",
                    hint="run `cellcorpus dedup` again on a corpus of these inputs, or leave the list out",
                )


def _apply_filters(
    block: RawBlock, hf: HuggingfaceConfig, counts: dict[str, int], columns: _Columns, own: np.ndarray | None
) -> np.ndarray:
    """Row mask after the encoding's own filter (`own`, counted by it), obs_filter, then min_genes, then
    min_counts; each drop counted where it happens."""
    keep = np.ones(len(block.indptr) - 1, dtype=bool) if own is None else own.copy()
    if hf.obs_filter:
        hit = columns[hf.obs_filter.key] == str(hf.obs_filter.value)
        counts["filtered_obs_filter"] = int(np.count_nonzero(keep & ~hit))
        keep &= hit
    fc = hf.filter_cells
    if fc and (fc.min_genes is not None or fc.min_counts is not None):
        n_genes, totals = row_stats(block.indptr, block.data)
        for key, value, minimum in (("min_genes", n_genes, fc.min_genes), ("min_counts", totals, fc.min_counts)):
            if minimum is not None:
                ok = value >= minimum
                counts[f"filtered_{key}"] = int(np.count_nonzero(keep & ~ok))
                keep &= ok
    return keep


def tokenize_unit(unit: WorkUnit, ctx: TokenizeContext) -> UnitResult:
    """Tokenize rows [row_start, row_stop) of one file and write one Arrow part per split."""
    hf = ctx.hf
    lookup_ = vocab_lookup(ctx.vocab_file)
    encoding = encoding_for(hf, lookup_.vocab)  # cheap: what it loads, it caches itself
    block = input_format(hf).read_block(unit.path, unit.row_start, unit.row_stop, hf)
    scan = scan_counts(block.data)
    if scan.problem:
        raise InputError(f"{unit.path} rows {unit.row_start}-{unit.row_stop}: {scan.problem}")
    if hf.gene_id_map is None:
        gene_map = lookup_.map_genes(block.var_ids)
        _check_duplicate_genes(gene_map, block.var_ids, unit.path)
        mapping_counts: dict[str, int] = {}
        collisions = False
    else:  # harmonized: genes reaching the same id collide, and their counts are summed per cell below
        mapping = gene_mapping(hf, block.var_ids, lookup_)
        gene_map, mapping_counts, collisions = mapping.gene_map, mapping.counts(), mapping.n_colliding > 0
    counts = dict.fromkeys((*COUNT_KEYS, *encoding.count_keys), 0)
    counts["cells_read"] = unit.n_cells
    columns = _Columns(block, hf, ctx.join_indexes)
    prepared = encoding.prepare(UnitInput(block.indptr, block.indices, block.data, block.obs, unit.path))
    counts.update(prepared.counts)
    keep = _apply_filters(block, hf, counts, columns, prepared.keep)
    # The table holds every row read; the kept rows are picked by the split writes' gathers (one copy).
    all_ids = make_ids(unit.file_index, unit.row_start + np.arange(unit.n_cells, dtype=np.int64))
    if hf.drop_ids:  # cells listed to leave out (duplicates found by `cellcorpus dedup`), after the other filters
        listed = in_sorted(all_ids, dropped_ids(tuple(hf.drop_ids)))
        counts[DROP_KEY] = int(np.count_nonzero(keep & listed))
        keep &= ~listed
    rows = np.flatnonzero(keep)
    meta = _metadata(columns, ctx)
    key_values = _key_columns(columns, hf, unit)
    group = columns[hf.split_parameters.by] if ctx.valid_groups is not None and hf.split_parameters.by else None
    del columns
    # the one parse every encoding starts from (special tokens are the encoding's: none here)
    indices, data = block.indices, block.data
    if encoding.columns_ascending:
        indices, data = columns_ascending(block.indptr, indices, data)
    try:
        cells = tokenize_csr(
            block.indptr, indices, data, gene_map, None, hf.pad_value, scan.n_zero, encoding.value_dtype
        )
    except IndexError as exc:  # a corrupt X
        raise InputError(f"{unit.path} rows {unit.row_start}-{unit.row_stop}: {exc}") from None
    del block, indices, data  # raw rows no longer needed: peak memory is one copy of the unit, not two
    counts["explicit_zeros_dropped"] = cells.n_explicit_zeros
    counts["oov_entries_dropped"] = cells.n_oov_entries
    n_summed = 0
    if collisions:
        offsets, genes, values, n_summed = merge_duplicate_tokens(cells.offsets, cells.genes, cells.expressions)
        cells = Ragged(offsets, genes, values, cells.n_explicit_zeros, cells.n_oov_entries)
    if hf.min_vocab_genes:  # after the other filters, so each drop is counted once, where it happens
        enough = cells.lengths() >= hf.min_vocab_genes
        counts["filtered_min_vocab_genes"] = int(np.count_nonzero(keep & ~enough))
        keep &= enough
        rows = np.flatnonzero(keep)
    ids = all_ids[rows]
    held_out: dict[str, int] = {}
    split_key = _split_key(key_values, rows, hf, unit) if key_values is not None else None
    if group is not None and ctx.valid_groups is not None:  # whole groups, chosen once for the corpus
        kept_groups = group[rows]
        valid = np.isin(kept_groups, np.array(ctx.valid_groups, dtype=object))
        names, n = np.unique(kept_groups[valid].astype(str), return_counts=True)
        held_out = dict(zip(names.tolist(), n.tolist(), strict=True))
    else:
        by = ids if split_key is None else split_key  # the cell's id, or the values of its content key
        valid = assign_valid(by, hf.split_parameters.test_size, hf.split_parameters.seed)
    if split_key is not None:  # kept cells' keys, for the corpus-wide repeat check (tokenize_keys)
        write_unit_keys(Path(ctx.parts_dir), unit.unit_id, split_key, ids)
    if hf.fingerprints or hf.cell_hash:  # each cell's content (core/fingerprint.py)
        fps = cell_fingerprints(cells.offsets, cells.genes, cells.expressions, lookup_.token_hashes())
        if hf.fingerprints:  # the kept cells', for `cellcorpus dedup`
            write_unit_fingerprints(ctx.parts_dir, unit.unit_id, fps[rows], ids)
        if hf.cell_hash:  # every row's (the writes pick the kept ones, as for the other metadata)
            meta[CELL_HASH] = hex_fingerprints(fps)
    encoded = encoding.encode(cells, prepared)
    del cells, prepared
    for key, n in encoded.counts.items():
        counts[key] += n
    prefix = encoded.prefix  # written first by the split writes' gathers (no insertion pass over the tokens)
    schema = cell_schema(ctx.columns, list(ctx.metadata_columns))
    table = cells_table(encoded.offsets, encoded.lists, encoded.scalars, all_ids, meta, schema)
    del encoded
    buckets = dict(ctx.n_buckets)
    # the shuffle reads its parts back once: tokens in 16 bits there halve those writes and reads
    shuffled_table = compact_part(table, encoding.narrow(scan, n_summed > 0)) if buckets else table
    outputs = []
    for split, mask in (("train", ~valid), ("valid", valid)):
        sel = np.flatnonzero(mask)
        extra = {"split": split, "n_cells": len(sel)}
        bounds = None
        if split in buckets:
            order, bounds = order_by_bucket(shuffle_keys(ids[sel], hf.split_parameters.seed), buckets[split])
            sel = sel[order]
        part = Path(ctx.parts_dir) / split / f"{unit.unit_id}.arrow"
        fused = ctx.fused_mds
        mds = None
        if fused is not None and fused.scratch_ok(split) and split not in buckets:  # unshuffled: the part is final
            mds = fused.scratch_writer(split, unit.unit_id, str(part), len(sel))
        source = shuffled_table if split in buckets else table
        # shuffled: a bucket's rows are their own batches, so its shuffle unit reads just its bytes
        written = write_stream(part, source, rows=rows[sel], each=mds.add if mds else None, prefix=prefix, cuts=bounds)
        if bounds is not None:  # beside the part, not in the record: see formats/shuffle_plan.py
            extra["bounds"] = write_part_bounds(part, bounds, written.cut_bytes)
        if mds is not None:
            mds.close()
        counts[f"written_{split}"] = written.rows
        outputs.append(output_record(part, ctx.parts_dir, written.xxh64, **extra))
    n_oov_genes = int(np.count_nonzero(gene_map < 0))
    extra = {
        "file_index": unit.file_index,
        "oov_genes": n_oov_genes,
        "input_checksum": unit.checksum,
        "fractional_values": scan.n_fractional,
        "colliding_entries_summed": n_summed,
        **mapping_counts,
        **({"held_out_groups": held_out} if held_out else {}),
    }
    return UnitResult(unit.unit_id, counts, outputs, extra)


# ---- stage --------------------------------------------------------------------------------------
def _work_settings(hf: HuggingfaceConfig, drop_duplicates: bool = False) -> tuple[str, dict[str, Any]]:
    """Identity of the settings: everything that decides the output bytes, nothing that only says where.

    Paths are replaced by the content of what they point at (vocabulary, join tables, gene table), so a
    relative vs absolute spelling or a moved folder is the same work; num_proc never changes outputs.
    `drop_duplicates`: `dedup: {policy: drop}` (recorded only then: other identities stay the same).
    """
    settings = hf.model_dump(mode="json", exclude=set(HF_LOCATION_KEYS) | {"parquet_gene_table"})
    if drop_duplicates:
        settings["dedup"] = "drop"
    if settings["split_parameters"]["key"] == "id":  # the default: identities of earlier runs stay the same
        del settings["split_parameters"]["key"]
    for flag in ("fingerprints", "cell_hash"):  # off, the default: identities of earlier runs stay the same
        if not settings[flag]:
            del settings[flag]
    if settings["drop_ids"]:  # the lists by content, not by where they are
        settings["drop_ids"] = [file_checksum(p) for p in settings["drop_ids"]]
    else:
        del settings["drop_ids"]
    if settings["encoding"] == "tahoe_x1" and settings["geneformer"] is None and settings["scgpt"] is None:
        del settings["encoding"], settings["geneformer"], settings["scgpt"]  # likewise
    elif settings["geneformer"] is not None:  # the medians by content, not by where they are
        settings["geneformer"]["gene_median"] = file_checksum(settings["geneformer"]["gene_median"])
    for join in settings["additional_metadata_info"]:
        join["path"] = file_checksum(join["path"])
    if settings.get("gene_id_map"):
        settings["gene_id_map"]["path"] = file_checksum(settings["gene_id_map"]["path"])
    gene_table = file_checksum(hf.parquet_gene_table) if hf.parquet_gene_table else None
    vocab = file_checksum(hf.vocab_file)
    return config_hash(settings, vocab, gene_table), {**settings, "vocabulary": vocab, "gene_table": gene_table}


def _stage_hash(work_hash: str, inputs: list[InputFile]) -> str:
    return config_hash(work_hash, [(f.rel_path, f.n_bytes, f.checksum) for f in inputs])


def _idle_join_notes(hf: HuggingfaceConfig, totals: dict[str, int]) -> list[str]:
    """A join read only for the obs_filter's column, where that filter dropped nothing: the join (100M rows in
    the Tahoe release's obs_metadata) could be left out."""
    f = hf.obs_filter
    if f is None or totals.get("filtered_obs_filter", 0) or totals.get("cells_read", 0) == 0:
        return []
    notes = []
    for join in hf.additional_metadata_info:
        if f.key in join.columns:
            notes.append(
                f"obs_filter {f.key} == {f.value!r} (a column of {Path(join.path).name}) dropped no cell: that "
                "join filters nothing here"
            )
    return notes


def non_integer_values(inputs: list[InputFile], results: list[UnitResult]) -> dict[str, int]:
    """Input (relative path) -> count values that are not whole numbers (normalised data), where any."""
    by_file: dict[int, int] = {}
    for r in results:
        if r.extra.get("fractional_values"):
            fi = r.extra["file_index"]
            by_file[fi] = by_file.get(fi, 0) + r.extra["fractional_values"]
    paths = {f.file_index: f.rel_path for f in inputs}
    return {paths[fi]: n for fi, n in sorted(by_file.items())}


def _file_notes(inputs: list[InputFile], results: list[UnitResult]) -> list[str]:
    notes = [
        f"{path}: {n:,} non-integer count value(s); tokenized as they are (raw counts expected)"
        for path, n in non_integer_values(inputs, results).items()
    ]
    genes: dict[int, dict] = {}
    summed: dict[int, int] = {}
    paths = {f.file_index: f.rel_path for f in inputs}
    for r in results:
        if "genes_via_map" in r.extra:
            genes[r.extra["file_index"]] = r.extra
            summed[r.extra["file_index"]] = summed.get(r.extra["file_index"], 0) + r.extra["colliding_entries_summed"]
    for fi, e in sorted(genes.items()):
        notes.append(
            f"{paths[fi]}: genes {e['genes_direct']:,} direct, {e['genes_via_map']:,} via gene_id_map, "
            f"{e['genes_ambiguous']:,} ambiguous, {e['genes_unmapped']:,} unmapped (not tokenized); "
            f"{e['genes_colliding']:,} share an id ({summed[fi]:,} entries summed into one)"
        )
    return notes


def _check_split_sizes(hf: HuggingfaceConfig, totals: dict[str, int]) -> None:
    """A split with no cells is an error (an empty corpus is never a success), unless test_size is 0."""
    n_written = totals["written_train"] + totals["written_valid"]
    if n_written == 0:
        raise InputError(
            f"no cells left after filters ({totals['cells_read']:,} read: "
            + ", ".join(f"{k.removeprefix('filtered_')} {totals[k]:,}" for k in COUNT_KEYS if k.startswith("filtered"))
            + ")",
            hint="check huggingface.obs_filter / filter_cells / min_vocab_genes and the inputs' gene ids",
        )
    test_size = hf.split_parameters.test_size
    for split in SPLITS:
        if totals[f"written_{split}"] == 0 and not (split == "valid" and test_size == 0):
            raise InputError(
                f"the {split} split would have 0 cells ({n_written:,} written in all, test_size {test_size})",
                hint="more input cells or another huggingface.split_parameters.test_size (0 = no valid split)",
            )


@locked("tokenize")
def run_tokenize(
    cfg: Config | Plan,
    spec: ExecutorSpec | None = None,
    reporter: Reporter | None = None,
    *,
    export: Callable[[str], FusedExport | None] | None = None,
) -> StageSummary:
    """Plan, run pending units, finalize both splits; skips everything when already complete.

    Every check (config, inputs' columns and gene coverage, whether finished output may be replaced)
    happens before the first unit and before anything on disk is changed. `export` (`cellcorpus run`):
    given this run's stage hash, the export (owned by another stage: the MDS shards) the Arrow writes also feed,
    or None (stages/tokenize_finalize.py): one pass over the tokens.
    """
    plan = plan_for(cfg, "tokenize", spec)  # (`locked` resolved it: this is that plan)
    cfg, layout, spec = plan.cfg, plan.layout, plan.executor
    hf: HuggingfaceConfig = cfg.need("huggingface")
    if is_url(hf.output_root):
        raise ConfigError(f"huggingface.output_root: must be a local scratch folder, got {hf.output_root}")
    vocab = load_vocab(hf.vocab_file)
    encoding = encoding_for(hf, vocab)
    encoding.check()  # before any worker starts (a special token missing from the vocabulary, ...)
    notes = preflight(plan)  # the config first; then every input, opened once for both checks
    out = layout.merged_root()
    out_dir = out.local_dir
    markers = [f"{s}.dataset/state.json" for s in SPLITS]
    warm_up_unless_complete(spec, out_dir, markers, ("cellcorpus.stages.tokenize",))
    remove_temporaries(out_dir, MANIFEST)  # a killed run's half-written files, by the names this stage writes
    for split in SPLITS:
        for name in ("data-*-of-*.arrow", "state.json", "dataset_info.json"):
            remove_temporaries(out_dir / f"{split}.dataset", name)
    inputs, inspection = discover_and_inspect(hf, vocab, layout.decompressed)
    drop_duplicates = cfg.dedup is not None and cfg.dedup.policy == "drop"
    work_hash, work_settings = _work_settings(hf, drop_duplicates)
    stage_hash = _stage_hash(work_hash, inputs)  # over the sorted listing: what a rerun without --append computes
    # numbered as the finished build recorded them; with --append, the new files after them (base: what they extend)
    inputs, base = resolve_inputs(out, inputs, work_hash, stage_hash, markers, plan.append)
    todo = base.new if base else inputs  # the files this run tokenizes
    check_id_lists(hf.drop_ids, inputs)  # ids are (input, row): a list made from other inputs would drop others
    notes += inspection.notes
    valid_groups = _valid_groups(hf, inspection, base, notes) if hf.split_parameters.by else None
    total = sum(f.n_obs for f in todo)
    n_buckets: tuple[tuple[str, int], ...] = ()
    if hf.split_parameters.shuffle:
        tsize = hf.split_parameters.test_size
        groups = inspection.groups_of([f.rel_path for f in todo])
        if valid_groups is not None and groups:  # whole groups: valid's own share of the inputs
            tsize = sum(groups.get(g, 0) for g in valid_groups) / max(sum(groups.values()), 1)
        n_buckets = tuple(
            (s, n_buckets_for(round(total * frac), hf.shuffle_bucket_cells, hf.num_chunks))
            for s, frac in (("train", 1 - tsize), ("valid", tsize))
        )
    index_column = obs_index_column(hf, inputs[0])
    check_renames(hf, index_column)  # again, now that the obs index's name is known
    fused = export(stage_hash) if export else None
    ctx = TokenizeContext(
        hf=hf,
        vocab_file=hf.vocab_file,
        parts_dir=str(layout.parts),
        metadata_columns=tuple(hf.metadata_columns(index_column)),
        index_column=index_column,
        n_buckets=n_buckets,
        fused_mds=fused,
        columns=column_specs(encoding),
        join_indexes=join_index_dirs(hf, work_settings, layout.joins),
        valid_groups=valid_groups,
    )

    def plan_units() -> list[WorkUnit]:
        for key in ("parts", "units") + (("joins",) if any(ctx.join_indexes) else ()):
            claim_dir(layout.scratch_dirs()[key], f"huggingface.output_root ({key}/)")
        for join, folder in zip(hf.additional_metadata_info, ctx.join_indexes, strict=True):
            if folder is not None:  # once per run, here: workers then read only the pages their keys need
                log.info("indexing join table %s (too large to load in every worker)", join.path)
                build_join_index(join.path, join.merge_keys.metadata_key, join.columns, Path(folder))
        if fused is not None:  # tokenize rebuilds: the export it replaces must never look complete meanwhile
            claim_dir(fused.identity.out.local_dir, fused.identity.key, OUTPUT_RECORDS)
            for marker in fused.identity.markers:
                fused.identity.out.remove(marker)
            fused.clear_stale()
        if base is not None:  # before the datasets' markers go: a rerun resumes this as an append
            base.start(out)
        else:  # an append left unfinished is rebuilt as a whole now: its data files go with its record
            abandon_append(out)
        return plan_tokenize(hf, todo)

    def finalize(units: Sequence[WorkUnit], results: list[UnitResult]) -> tuple[dict[str, Any], StageSummary]:
        dropped = None
        if drop_duplicates:  # found among every unit's cells (and an append's finished ones); results updated
            finished = [(out.url(r.path), r.bytes) for r in (base.previous.fingerprints or [])] if base else []
            dropped = find_duplicates(ctx.parts_dir, list(units), results, inputs, stage_hash, finished)
        keys = (
            *COUNT_KEYS,
            *encoding.count_keys,
            *((DROP_KEY,) if hf.drop_ids else ()),
            *((DUPLICATES_KEY,) if dropped else ()),
        )
        totals = {k: sum(r.counts.get(k, 0) for r in results) for k in keys}
        _check_split_sizes(hf, merge_counts(base.previous.totals, totals) if base else totals)
        if hf.split_parameters.key != "id":  # before any dataset file is written (an append: among its own cells)
            check_unique_keys(layout.parts, [u.unit_id for u in units], hf, inputs)
        previous = _previous_manifest(out)  # the build this one extends or replaces
        earlier = {s: base.records(s) for s in SPLITS} if base else {}
        generation = base.generation if base else 0
        drop = dropped.path if dropped else None
        shard_records = finalize_splits(
            ctx, layout, list(units), results, spec, stage_hash, reporter, earlier, generation, drop
        )
        if base is None and previous is not None:  # a rebuild: data files of the build it replaces it did not write
            _remove_unlisted(out, previous, shard_records)
        exports: dict[str, list[dict[str, Any]]] = {}
        for split, records in shard_records.items():  # the model's own layout too, where it has one (scBank)
            # (under a URL the data files were uploaded, and an append's earlier ones were never local: read there)
            files = [
                out.url(f"{split}.dataset/{r['path']}") if out.remote else str(out_dir / f"{split}.dataset" / r["path"])
                for r in earlier.get(split, []) + records
            ]
            for written in encoding.export(split, files, out_dir):
                exports.setdefault(split, []).append(output_record(written, out_dir))  # (verify hashes it)
                out.publish(written)
        body = {
            "dataset_name": cfg.for_output("huggingface.dataset_name", hf.dataset_name),
            "metadata_columns": list(ctx.metadata_columns),
            "inputs": [
                {
                    "file_index": f.file_index,
                    "path": f.rel_path,
                    "bytes": f.n_bytes,
                    "checksum": f.checksum,
                    "n_obs": f.n_obs,
                }
                for f in inputs
            ],  # fmt: skip
            "units": [{"unit_id": r.unit_id, **r.counts, **r.extra} for r in results],
            "splits": shard_records,
            "totals": totals,
        }
        if exports:
            body["exports"] = exports
        if hf.fingerprints:  # beside the datasets: the parts folder goes once the manifest is written
            # the previous build's, which a rebuild replaces (an append keeps them)
            recorded = [r.path for r in (previous.fingerprints or [])] if previous and not base else []
            written = publish_fingerprints(ctx.parts_dir, [u.unit_id for u in units], out, recorded)
            body["fingerprints"] = [output_record(p, out_dir) for p in written]
        if dropped is not None:  # the duplicates left out: cells, groups, per pair of inputs with an example
            body["duplicates_dropped"] = dropped.record
        if fractional := non_integer_values(inputs, results):  # normalised data, recorded (not only said)
            body["non_integer_values"] = fractional
        if valid_groups is not None:  # which groups valid holds, and the cells written of each
            held: dict[str, int] = dict.fromkeys(valid_groups, 0)
            for r in results:
                for g, n in r.extra.get("held_out_groups", {}).items():
                    held[g] += n
            body["held_out_groups"] = held
        notes_out = notes + _file_notes(inputs, results) + _idle_join_notes(hf, totals)
        if base is not None:
            body = base.merged(body)
            notes_out.append(_append_note(base, body["totals"]))
        summary = StageSummary("tokenize", counts=totals, outputs=_outputs(out), notes=notes_out)
        return body, summary

    def cleanup() -> None:
        # The manifest is now the completion record: unit parts were moved or shuffled into the datasets, so
        # their completion records would point at nothing; a later rebuild redoes every unit.
        remove_owned(ctx.parts_dir)  # only folders this tool created and marked: never a user's
        remove_owned(layout.units())
        remove_owned(layout.joins)
        out.remove(APPEND_RECORD)  # the merged manifest is the record of the append now

    stage: StageRun[TokenizeManifest] = StageRun(
        name="tokenize",
        out=out,
        markers=markers,
        key="huggingface.merged_dataset_root",
        what="dataset",
        settings_hash=work_hash,
        stage_hash=stage_hash,
        manifest_model=TokenizeManifest,
        ledger=Ledger(layout.units("tokenize"), work_hash),
        plan=plan_units,
        run_unit=tokenize_unit,
        context=ctx,
        finalize=finalize,
        skipped=lambda m: StageSummary("tokenize", skipped=True, counts=m.totals, outputs=_outputs(out), notes=notes),
        cells_of=lambda u: u.n_cells,
        is_current=lambda u, r: r.extra.get("input_checksum") == u.checksum,
        after_manifest=cleanup,
        appending=base is not None,
        settings=cfg.settings_for_output("huggingface", work_settings),
    )
    return run_stage(stage, spec, reporter)


def _previous_manifest(out: Publisher) -> TokenizeManifest | None:
    """The manifest on disk (None when there is none, or it cannot be read: nothing is removed on its word)."""
    try:
        return read_manifest(out, MANIFEST, TokenizeManifest)
    except InputError:
        return None


def _remove_unlisted(out: Publisher, previous: TokenizeManifest, written: dict[str, list[dict]]) -> None:
    """Data files the previous build's manifest lists that this rebuild did not write (fewer files now, or an
    earlier append's): removed by name, so nothing unlisted stays in a dataset folder; no other file is."""
    for split, records in previous.splits.items():
        now = {r["path"] for r in written.get(split, [])}
        for rec in records:
            if rec.path not in now:
                out.remove(f"{split}.dataset/{rec.path}")


def _valid_groups(hf: HuggingfaceConfig, inspection: Any, base: AppendBase | None, notes: list[str]) -> tuple[str, ...]:
    """The groups valid holds whole. An append keeps the finished build's: its held-out groups stay held out, its
    other groups stay in train (new cells of a finished group follow it); groups new in the appended files are
    chosen among themselves by the same rule."""
    if base is None:
        return _held_out_groups(hf, inspection.groups, notes)
    finished = inspection.groups_of([f.rel_path for f in base.inputs if f not in base.new])
    fresh = {g: n for g, n in inspection.groups_of([f.rel_path for f in base.new]).items() if g not in finished}
    held = set(base.previous.held_out_groups or {})
    return tuple(sorted(held | set(_held_out_groups(hf, fresh, notes))))


def _append_note(base: AppendBase, totals: dict[str, int]) -> str:
    return (
        f"appended {len(base.new):,} input file(s) (append {base.generation}) to the finished corpus, whose data files "
        f"are unchanged; it now holds {totals['written_train']:,} train and {totals['written_valid']:,} valid cells "
        f"from {len(base.inputs):,} input files"
    )


def _outputs(out: Publisher) -> dict[str, str]:
    return {s: out.url(f"{s}.dataset") for s in SPLITS}


def tokenize_in_memory(
    adata: Any, vocab: dict[str, int], gene_col: str, file_index: int, settings: dict[str, Any]
) -> dict[str, pa.Table]:
    """Tokenize an in-memory AnnData with the tokenize unit itself (`cellcorpus.tokenize_anndata`): written to a
    temporary h5ad, read back in row ranges, so nothing can drift from the CLI. {split: table} of kept cells."""
    with tempfile.TemporaryDirectory(prefix="cellcorpus-api-") as tmp:
        root = Path(tmp)
        (root / "raw").mkdir()
        adata.write_h5ad(root / "raw" / "cells.h5ad")
        write_json_atomic(root / "vocab.json", vocab, sort_keys=False)
        try:
            hf = HuggingfaceConfig.model_validate(
                {
                    "adata_dir": str(root / "raw"),
                    "output_root": str(root / "work"),
                    "merged_dataset_root": str(root / "merged"),
                    "vocab_output_root": str(root),
                    "vocab_path": "vocab.json",
                    "gene_col": gene_col,
                    # small units: a unit's transient arrays stay well under the table being returned
                    "unit_cells": 4096,
                    **settings,
                }
            )
        except Exception as exc:
            raise ConfigError(f"tokenize_anndata: {exc}") from exc
        inputs, _ = discover_and_inspect(hf, vocab, root / "decompressed")
        index_column = obs_index_column(hf, inputs[0])
        ctx = TokenizeContext(
            hf=hf,
            vocab_file=str(root / "vocab.json"),
            parts_dir=str(root / "parts"),
            metadata_columns=tuple(hf.metadata_columns(index_column)),
            index_column=index_column,
            n_buckets=(),
            columns=column_specs(encoding_for(hf, vocab)),
        )
        tables: dict[str, list[pa.Table]] = {"train": [], "valid": []}
        n_fractional = 0
        for unit in plan_tokenize(hf, inputs):
            unit = type(unit)(unit.unit_id, unit.path, file_index, unit.row_start, unit.row_stop, unit.checksum)
            n_fractional += int(tokenize_unit(unit, ctx).extra.get("fractional_values", 0))
            for name in tables:
                # read into memory, not mapped: the tables outlive the temporary folder (one copy of the bytes;
                # a to_pydict round trip used to take ~12x the output's size through Python objects)
                tables[name].append(read_arrow(root / "parts" / name / f"{unit.unit_id}.arrow", in_memory=True))
        result = {name: pa.concat_tables(parts) for name, parts in tables.items() if parts}
    if n_fractional:  # the CLI says it in its summary and records it in the manifest; here, a warning
        warnings.warn(
            f"tokenize_anndata: {n_fractional:,} count value(s) are not whole numbers (normalised data?); they are "
            "tokenized as they are, where the Tahoe-x1 recipe expects raw counts",
            UserWarning,
            stacklevel=3,
        )
    return result
