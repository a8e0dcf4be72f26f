"""Tokenize's second half: unit parts -> HF dataset folders, per split (part of the tokenize stage).

Unshuffled: each unit's part becomes a data file, in unit order (a rename, no copy).
Shuffled: an external bucket shuffle. Every part is already sorted by the cell's shuffle key and
records where each bucket starts, in rows and in bytes (a bucket's rows are batches of their own); a
shuffle unit reads bucket b's bytes from every part (past the page cache, so memory ~ one bucket), sorts
by key and writes `data-b-of-B`. Bucket b holds the key
range [b/B, (b+1)/B), so bucket order + in-bucket key order is one seeded global permutation.
Fused (`cellcorpus run` with an mds section reading this output): the shuffle unit also hands each batch
it writes to the export's writer for its data file (`FusedExport`, owned by the MDS side, which writes and
records its own unit); unshuffled, each tokenize unit writes its part's export into scratch, adopted when the
part becomes a data file. Either way the tokens are written once and the mds stage only merges indexes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from cellcorpus.config import HuggingfaceConfig, config_hash
from cellcorpus.core.ids import in_sorted
from cellcorpus.core.split import shuffle_keys
from cellcorpus.errors import InputError
from cellcorpus.exec.runner import ExecutorSpec, Reporter, run_units
from cellcorpus.formats.arrow import (
    CellColumns,
    cell_schema,
    data_file_name,
    read_arrow,
    read_stream_ranges,
    write_dataset_metadata,
    write_stream,
)
from cellcorpus.formats.shuffle_plan import Slice, bucket_slices, part_bounds, write_bucket_plan
from cellcorpus.io.paths import Publisher, filesystem
from cellcorpus.layout import SPLITS, Layout
from cellcorpus.manifest import Ledger, UnitResult, file_checksum, output_record
from cellcorpus.stages.base import FusedExport, WorkUnit
from cellcorpus.stages.tokenize_dedup import load_ids

__all__ = [
    "TokenizeContext",
    "ShuffleUnit",
    "shuffle_units",
    "shuffle_unit",
    "read_bucket",
    "finalize_splits",
]


@dataclass(frozen=True)
class TokenizeContext:
    """Everything a unit needs besides its row range; small and picklable (sent with each unit)."""

    hf: HuggingfaceConfig
    vocab_file: str
    parts_dir: str
    metadata_columns: tuple[str, ...]
    index_column: str | None
    n_buckets: tuple[tuple[str, int], ...]  # split -> shuffle buckets (empty when not shuffling)
    fused_mds: FusedExport | None = None  # another stage's export written in this pass (the MDS shards)
    columns: CellColumns = ()  # the encoding's output columns (name, dtype, one list per cell)
    join_indexes: tuple[str | None, ...] = ()  # per join: its on-disk index (a large table), else None
    valid_groups: tuple[str, ...] | None = None  # `split_parameters.by`: the groups held out whole


@dataclass(frozen=True, order=True)
class ShuffleUnit:
    """Gather bucket `bucket` of a split from every part: where its rows lie in each part is read from the
    split's bucket plan (`formats/shuffle_plan.py`) where the unit runs, so the unit itself stays small."""

    unit_id: str
    path: str  # the output data file (named in errors)
    bucket: int
    n_cells: int  # cells gathered into this bucket
    plan: str

    def pieces(self) -> list[pa.Table]:
        """The bucket's rows from every part, each piece read alone past the page cache where its bytes are known."""
        return read_bucket(bucket_slices(self.plan, self.bucket), self.bucket)


def read_bucket(slices: list[Slice], bucket: int) -> list[pa.Table]:
    """Rows [lo, hi) of each part: its batches in bytes [byte_lo, byte_hi), or (-1, -1: parts of an earlier
    version whose batches span buckets) sliced from the whole part, memory-mapped."""
    live = [s for s in slices if s[2] > s[1]]
    by_bytes = iter(read_stream_ranges([(p, blo, bhi) for p, _, _, blo, bhi in live if blo >= 0]))
    pieces = []
    for part, lo, hi, blo, _ in live:
        piece = next(by_bytes) if blo >= 0 else read_arrow(part).slice(lo, hi - lo)
        if piece.num_rows != hi - lo:
            raise InputError(
                f"{part}: bucket {bucket} holds {piece.num_rows} rows, {hi - lo} recorded",
                hint="an intermediate file was changed; delete huggingface.output_root's parts and rerun",
            )
        pieces.append(piece)
    return pieces


@dataclass(frozen=True)
class ShuffleContext:
    seed: int
    columns: CellColumns
    metadata_columns: tuple[str, ...]
    root: str  # the split's local folder (output record paths are relative to it)
    publisher: Publisher
    split: str
    mds: FusedExport | None = None
    drop: str | None = None  # `dedup: {policy: drop}`: the sorted ids left out (stages/tokenize_dedup.py)
    offset: int = 0  # data files the split held before (an append): bucket b is the split's (offset + b)-th file


def shuffle_unit(unit: ShuffleUnit, ctx: ShuffleContext) -> UnitResult:
    """Concatenate one bucket's slices, order by shuffle key, write the data file atomically."""
    pieces = unit.pieces()
    schema = cell_schema(ctx.columns, list(ctx.metadata_columns))
    if len({p.schema for p in pieces}) > 1:  # compact and wide parts (counts over 32,767; an earlier version)
        pieces = [p.cast(schema) for p in pieces]
    table = pa.concat_tables(pieces) if pieces else schema.empty_table()  # zero-copy over the pieces
    if ctx.drop is not None:  # duplicates this build leaves out
        table = table.filter(~in_sorted(table.column("id").to_numpy(), load_ids(ctx.drop)))
    order = np.argsort(shuffle_keys(table.column("id").to_numpy(), ctx.seed), kind="stable")
    # the bucket's data file is the split's i-th: the export writes (and records) its own unit for exactly it
    mds = ctx.mds.bucket_writer(ctx.split, ctx.offset + unit.bucket, unit.path, table.num_rows) if ctx.mds else None
    written = write_stream(unit.path, table, rows=order, each=mds.add if mds else None, schema=schema)
    record = output_record(unit.path, ctx.root, written.xxh64, n_cells=table.num_rows)
    ctx.publisher.publish(unit.path)
    if mds is not None:
        mds.finish(record["xxh64"])
    return UnitResult(unit.unit_id, {"cells": table.num_rows}, [record])


def shuffle_units(
    parts: list[tuple[str, dict]], split: str, dest: Path, n: int, generation: int = 0
) -> list[ShuffleUnit]:
    """One unit per bucket of `split`, over the bucket plan written beside the parts (data files named for the
    `generation`-th append, when not 0)."""
    plan = Path(parts[0][0]).parent / "shuffle-plan.npy"
    cells = write_bucket_plan(plan, [p for p, _ in parts], lambda j: part_bounds(*parts[j]), n)
    return [
        ShuffleUnit(f"{split}-b{b:05d}", str(dest / data_file_name(b, n, generation)), b, int(cells[b]), str(plan))
        for b in range(n)
    ]


def _parts(
    ctx: TokenizeContext, units: list[WorkUnit], results: list[UnitResult], split: str
) -> list[tuple[str, dict]]:
    out = []
    for unit, res in zip(units, results, strict=True):
        rec = next(o for o in res.outputs if o["split"] == split)
        out.append((str(Path(ctx.parts_dir) / split / f"{unit.unit_id}.arrow"), rec))
    return out


def _finalize_unshuffled(
    parts: list[tuple[str, dict]],
    dest: Path,
    out: Publisher,
    split: str,
    fused: FusedExport | None,
    offset: int = 0,
    generation: int = 0,
    drop: str | None = None,
) -> list[dict]:
    # Empty parts are dropped, unless every part is empty and the split has no file before them (`offset`: an
    # append's): a dataset needs one file for its schema.
    kept = [(p, r) for p, r in parts if r["n_cells"] > 0] or (parts[:1] if not offset else [])
    records = []
    for i, (part, rec) in enumerate(kept):
        target = dest / data_file_name(i, len(kept), generation)
        if drop is not None and rec.get("dropped"):  # it holds duplicates left out: written again without them
            rec = {**rec, **_without_dropped(part, target, drop, out)}
            if fused is not None:  # its export holds them too: the mds stage converts the data file instead
                fused.discard(split, Path(part).stem)
        else:
            if Path(part).exists():  # already moved (and published) by an interrupted earlier finalize otherwise
                os.replace(part, target)
                out.publish(target)
            if fused is not None:
                fused.adopt(split, Path(part).stem, offset + i, target, rec)
        records.append({"path": target.name, "bytes": rec["bytes"], "xxh64": rec["xxh64"], "n_cells": rec["n_cells"]})
    if fused is not None:
        fused.clear_scratch(split)
    return records


def _without_dropped(part: str, target: Path, drop: str, out: Publisher) -> dict[str, Any]:
    """Write `part`'s rows but the dropped ones to `target` (then the part goes); its size and xxh64. A part
    already gone was written by an interrupted earlier finalize: the target is read back for them."""
    if Path(part).exists():
        table = read_arrow(part)
        written = write_stream(target, table, mask=~in_sorted(table.column("id").to_numpy(), load_ids(drop)))
        del table
        size = target.stat().st_size
        os.remove(part)
        out.publish(target)
        return {"bytes": size, "xxh64": written.xxh64}
    url = out.url(target.relative_to(out.local_dir).as_posix())
    fs, path = filesystem(url)
    return {"bytes": int(fs.size(path)), "xxh64": file_checksum(url)}


def finalize_splits(
    ctx: TokenizeContext,
    layout: Layout,
    units: list[WorkUnit],
    results: list[UnitResult],
    spec: ExecutorSpec,
    stage_hash: str,
    reporter: Reporter | None,
    earlier: dict[str, list[dict]] | None = None,
    generation: int = 0,
    drop: str | None = None,
) -> dict[str, list[dict]]:
    """Turn unit parts into `<split>.dataset` folders; state.json is written last in each. Returns the data files
    written, per split. An append (`earlier`: each split's finished data files, kept as they are) writes its own,
    named for its `generation`, and state.json lists the earlier ones first. `drop`: the sorted ids of duplicates
    left out (stages/tokenize_dedup.py)."""
    earlier = earlier or {}
    out = layout.merged_root()
    buckets = dict(ctx.n_buckets)
    shards: dict[str, list[dict]] = {}
    for split in SPLITS:
        dest = layout.dataset_dir(split)
        dest.mkdir(parents=True, exist_ok=True)
        parts = _parts(ctx, units, results, split)
        fused = ctx.fused_mds if ctx.fused_mds and split in ctx.fused_mds.splits else None
        before = earlier.get(split, [])
        if split not in buckets:
            records = _finalize_unshuffled(parts, dest, out, split, fused, len(before), generation, drop)
        else:
            sunits = shuffle_units(parts, split, dest, buckets[split], generation)
            seed = ctx.hf.split_parameters.seed
            sctx = ShuffleContext(
                seed, ctx.columns, ctx.metadata_columns, str(dest), out, split, fused, drop, len(before)
            )
            # derived work: its identity is the exact parts it reads; stale records are dropped
            parts_hash = config_hash(stage_hash, [r["xxh64"] for _, r in parts])
            ledger = Ledger(layout.units(f"shuffle-{split}"), parts_hash, derived=True)
            done = run_units(
                shuffle_unit,
                sunits,
                sctx,
                ledger,
                spec,
                description=f"shuffle {split}" + (" + mds" if fused else ""),
                cells_of=lambda u: u.n_cells,
                reporter=reporter,
            )
            records = [done[u.unit_id].outputs[0] for u in sunits]
        files = [r["path"] for r in before + records]
        write_dataset_metadata(dest, files, ctx.columns, list(ctx.metadata_columns))
        out.publish(dest / "dataset_info.json")
        out.publish(dest / "state.json")  # last: the split is visible only when whole
        shards[split] = records
    return shards
