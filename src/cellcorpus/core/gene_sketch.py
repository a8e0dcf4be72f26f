"""Per-gene quantile sketches over a whole corpus, in bounded memory and exactly mergeable.

Each gene's positive values are counted in logarithmic buckets (the DDSketch scheme: bucket i holds values in
(g^(i-1), g^i] with g = (1 + a) / (1 - a), and reports 2 g^i / (g + 1), within relative error a of every
value in it). Written by hand because the sketch libraries (ddsketch, crick, fastdigest) add values one gene
at a time from Python; here a block's values for every gene are bucketed and counted by two compiled passes
(`core/cell_kernels.py`, buckets in `core/log_buckets.py`), and a sketch is a sorted array of (gene, bucket)
keys with counts. Counts add, so merging is exact and the
result does not depend on the order, the number of processes or the unit size (a t-digest's would). Memory
grows with the genes and buckets seen (a few hundred buckets per gene at most), never with cells.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
from numpy.typing import NDArray

if TYPE_CHECKING:
    from cellcorpus.core.cell_kernels import GroupedValues

__all__ = ["GeneSketch", "GeneCounts", "pair_counts"]

_BUCKET_BITS = 21  # buckets -2^20 .. 2^20 per gene: values 1e-300 .. 1e300 at a = 0.05%
_OFFSET = 1 << (_BUCKET_BITS - 1)
_TABLE_CODEC = "lz4"  # a unit's dense table in its file
_MEDIAN_BLOCK = 1 << 22  # table entries per block of genes whose medians are read at once (~32 MB of sums)


def _keys(genes: NDArray[Any], buckets: NDArray[Any]) -> NDArray[np.int64]:
    """Sketch keys of (gene, bucket) pairs: ordered by gene, then bucket."""
    keys: NDArray[np.int64] = (genes.astype(np.int64) << _BUCKET_BITS) | (buckets.astype(np.int64) + _OFFSET)
    return keys


@dataclass(frozen=True)
class GeneSketch:
    """Counts of (gene, log bucket) keys, sorted by key; `gamma` the bucket ratio."""

    keys: NDArray[np.int64]
    counts: NDArray[np.int64]
    gamma: float

    @classmethod
    def empty(cls, relative_accuracy: float) -> GeneSketch:
        """No values yet, at this relative accuracy."""
        gamma = (1 + relative_accuracy) / (1 - relative_accuracy)
        return cls(np.zeros(0, np.int64), np.zeros(0, np.int64), gamma)

    def add(self, genes: NDArray[Any], values: NDArray[Any]) -> GeneSketch:
        """This sketch with the positive `values` of `genes` (non-negative ids) counted in."""
        more = GeneCounts(int(genes.max(initial=-1)) + 1, self.relative_accuracy, max_bytes=0)
        more.add(genes, values)
        return self.merge(more.sketch())

    @property
    def relative_accuracy(self) -> float:
        """a, from gamma = (1 + a) / (1 - a)."""
        return (self.gamma - 1) / (self.gamma + 1)

    def merge(self, other: GeneSketch) -> GeneSketch:
        """Both sketches' counts added (exact; the same whatever the order). Both key arrays are sorted, so one
        stable sort (a merge of two runs) orders them."""
        if not np.isclose(other.gamma, self.gamma, rtol=0, atol=1e-15):
            raise ValueError("sketches of different accuracy")
        if not len(other.keys) or not len(self.keys):  # nothing to add up: the other one as it is
            return self if not len(other.keys) else other
        keys = np.concatenate([self.keys, other.keys])
        order = np.argsort(keys, kind="stable")
        keys, counts = keys[order], np.concatenate([self.counts, other.counts])[order]
        starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
        return GeneSketch(keys[starts], np.add.reduceat(counts, starts), self.gamma)

    def pairs(self) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
        """(gene, bucket) of every key."""
        return self.keys >> _BUCKET_BITS, (self.keys & ((1 << _BUCKET_BITS) - 1)) - _OFFSET

    @classmethod
    def of_table(cls, table: NDArray[Any], low: int, gamma: float) -> GeneSketch:
        """The non-zero cells of a dense (gene x bucket) count table whose first column is bucket `low`."""
        flat = table.reshape(-1)
        at = np.flatnonzero(flat)
        width = table.shape[1]
        return cls(_keys(at // width, at % width + low), flat[at].astype(np.int64), gamma)

    def medians(self) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.float64]]:
        """(genes, values counted per gene, median per gene): the median as NumPy takes it (the mean of the two
        middle values for an even count), each middle value read from its bucket."""
        if not len(self.keys):
            return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
        genes, buckets = self.pairs()
        starts = np.flatnonzero(np.r_[True, genes[1:] != genes[:-1]])
        cum = np.cumsum(self.counts)
        before = np.r_[0, cum[starts[1:] - 1]]
        n = np.add.reduceat(self.counts, starts)
        rep = 2 * self.gamma ** buckets.astype(np.float64) / (self.gamma + 1)
        lo = np.searchsorted(cum, before + (n - 1) // 2, side="right")  # the bucket holding rank (n-1)//2
        hi = np.searchsorted(cum, before + n // 2, side="right")
        return genes[starts], n, (rep[lo] + rep[hi]) / 2


def pair_counts(
    genes: NDArray[Any], bucket: NDArray[np.int64], low: int, high: int
) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.int64]]:
    """Each distinct (gene, bucket) pair with how many times it occurs, by gene then bucket (buckets within
    low..high). One sort of packed keys groups them: 32-bit keys (gene, bucket above the lowest) when they fit,
    which NumPy's SIMD sort orders ~2x faster than 64-bit ones."""
    if not len(bucket):
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)
    span_bits = max(1, (high - low).bit_length())
    dtype = np.uint32 if span_bits + max(1, int(genes.max()).bit_length()) <= 32 else np.int64
    keys: NDArray[Any] = genes.astype(dtype)
    keys <<= dtype(span_bits)
    keys |= (bucket - low).astype(dtype)
    keys.sort()
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    distinct = keys[starts]
    counts = np.diff(np.r_[starts, len(keys)]).astype(np.int64)
    got_genes = (distinct >> dtype(span_bits)).astype(np.int64)
    buckets = (distinct & dtype((1 << span_bits) - 1)).astype(np.int64) + low
    return got_genes, buckets, counts


class GeneCounts:
    """A `GeneSketch` being built: counts in a dense (gene x bucket) table over the buckets seen so far, which
    grows to cover new buckets; past `max_bytes` it becomes a sparse sketch and blocks are merged into that
    instead, so memory stays bounded whatever the vocabulary and the values."""

    def __init__(
        self, n_genes: int, relative_accuracy: float, max_bytes: int = 512 << 20, dtype: type = np.uint32
    ) -> None:
        """`dtype` of the counts: uint32 holds a unit's; the merge of a whole corpus' units takes uint64."""
        self.n_genes, self.max_bytes, self.dtype = n_genes, max_bytes, dtype
        self.itemsize = np.dtype(dtype).itemsize
        self.sparse = GeneSketch.empty(relative_accuracy)
        self.table: NDArray[Any] | None = None
        self.low = 0

    def add(self, genes: NDArray[Any], values: NDArray[Any]) -> None:
        """Count the finite positive `values` of `genes` (ids below n_genes), through the same kernel as a block
        of cells (one cell, n_counts 1 and target_sum 1: each value as it is)."""
        from cellcorpus.core.cell_kernels import count_cells  # (compiled: loaded where used)

        genes, values = np.asarray(genes, dtype=np.int64), np.asarray(values)
        counted = (values > 0) & (values < np.inf)  # (others have no bucket)
        if not counted.all():
            genes, values = genes[counted], values[counted]
        offsets = np.array([0, len(genes)], dtype=np.int64)
        identity = np.arange(self.n_genes, dtype=np.int64)
        _, grouped = count_cells(offsets, genes, values, self.n_genes, identity, 1.0, self.sparse.gamma, np.ones(1))
        assert grouped is not None  # (every value finite and positive)
        self.add_grouped(grouped)

    def add_grouped(self, grouped: GroupedValues) -> None:
        """Count in a block's (gene, bucket) pairs as `core/cell_kernels.count_cells` wrote them: one compiled pass
        into the table, or into the sparse sketch when the table would be too wide."""
        if not len(grouped):
            return
        if not self._cover(grouped.low, grouped.high):
            genes, buckets = grouped.pairs()
            got_genes, got_buckets, counts = pair_counts(genes, buckets, grouped.low, grouped.high)
            self.sparse = self.sparse.merge(GeneSketch(_keys(got_genes, got_buckets), counts, self.sparse.gamma))
            return
        assert self.table is not None
        grouped.count_into(self.table, self.low)

    def add_sketch(self, other: GeneSketch) -> None:
        """Count in a finished sketch's counts (each key once in it: one indexed add)."""
        if not len(other.keys):
            return
        genes, buckets = other.pairs()
        if not self._cover(int(buckets.min()), int(buckets.max())):
            self.sparse = self.sparse.merge(other)
            return
        assert self.table is not None
        flat = self.table.reshape(-1)
        flat[genes * self.table.shape[1] + (buckets - self.low)] += other.counts.astype(self.table.dtype)

    def add_table(self, table: NDArray[Any], low: int) -> None:
        """Count in another builder's dense table (`packed`): one add of its columns into ours."""
        if not table.size:
            return
        if not self._cover(low, low + table.shape[1] - 1):  # (ours went sparse: through its sparse form)
            self.sparse = self.sparse.merge(GeneSketch.of_table(table, low, self.sparse.gamma))
            return
        assert self.table is not None
        columns = self.table[:, low - self.low : low - self.low + table.shape[1]]
        columns += table  # (NumPy casts the narrow counts in cache-sized pieces: no compiled kernel, so a merging
        # process never starts numba, ~0.8 s)

    def packed(self) -> dict[str, NDArray[Any]]:
        """Everything counted, for a file: the dense table LZ4-compressed in the smallest unsigned dtype its counts
        fit (mostly zeros and small counts: ~60% of the raw bytes; zstd's ~35% takes 2.5x as long to read back,
        and the merge reads every unit's), or the sparse sketch's keys and counts."""
        if self.table is None:
            return {"keys": self.sparse.keys, "counts": self.sparse.counts}
        top = int(self.table.max(initial=0))
        small = next(d for d in (np.uint8, np.uint16, np.uint32, np.uint64) if top <= np.iinfo(d).max)
        raw = np.ascontiguousarray(self.table, dtype=small)
        data = np.frombuffer(pa.compress(raw, codec=_TABLE_CODEC, asbytes=True), dtype=np.uint8)
        meta = np.array([self.low, *raw.shape, raw.nbytes], dtype=np.int64)
        return {"table_data": data, "table_codec": np.array(_TABLE_CODEC), "table_meta": meta,
                "table_dtype": np.array(np.dtype(small).str)}  # fmt: skip

    def add_packed(self, packed: Any) -> None:
        """Count in what `packed` wrote (a dense table or a sparse sketch)."""
        if "table_meta" in packed:
            low, rows, cols, nbytes = (int(v) for v in packed["table_meta"])
            # (a unit file of an earlier version: zstd, under the name that said so)
            data, codec = (packed["table_data"], str(packed["table_codec"])) if "table_data" in packed else (
                packed["table_zstd"], "zstd")  # fmt: skip
            raw = pa.decompress(data, decompressed_size=nbytes, codec=codec, asbytes=True)
            table = np.frombuffer(raw, dtype=np.dtype(str(packed["table_dtype"]))).reshape(rows, cols)
            if rows != self.n_genes:
                raise ValueError(f"a table of {rows} genes, not {self.n_genes}")
            self.add_table(table, low)
        else:
            self.add_sketch(GeneSketch(packed["keys"], packed["counts"], self.sparse.gamma))

    def medians(self) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.float64]]:
        """As `GeneSketch.medians`, read off the dense table (a few cumulative sums per block of genes, instead of
        a sparse copy of the table sorted by key first)."""
        if self.table is None or len(self.sparse.keys):
            return self.sketch().medians()
        gamma, width = self.sparse.gamma, self.table.shape[1]
        rep = 2 * gamma ** np.arange(self.low, self.low + width).astype(np.float64) / (gamma + 1)
        genes, counts, medians = [], [], []
        step = max(1, _MEDIAN_BLOCK // max(width, 1))
        for first in range(0, self.n_genes, step):
            block = self.table[first : first + step]
            n = block.sum(axis=1, dtype=np.int64)  # values per gene
            fits = int(n.max(initial=0)) <= np.iinfo(block.dtype).max  # (stats: a gene's values number at most
            # the cells, and the dtype holds those; a running sum in it is ~2x as fast)
            cum = np.cumsum(block, axis=1, dtype=block.dtype if fits else np.uint64)
            lo = np.argmax(cum > ((n - 1) // 2)[:, None], axis=1)  # the bucket holding rank (n-1)//2
            hi = np.argmax(cum > (n // 2)[:, None], axis=1)
            seen = np.flatnonzero(n)
            genes.append(seen + first)
            counts.append(n[seen])
            medians.append((rep[lo[seen]] + rep[hi[seen]]) / 2)
        return np.concatenate(genes), np.concatenate(counts), np.concatenate(medians)

    def _cover(self, low: int, high: int) -> bool:
        """Grow the table to hold buckets low..high; False (and the table turned sparse) when too wide."""
        if self.table is None and not self.max_bytes:
            return False
        if self.table is not None:
            low, high = min(low, self.low), max(high, self.low + self.table.shape[1] - 1)
        if self.n_genes * (high - low + 1) * self.itemsize > self.max_bytes:
            self.sparse, self.table, self.max_bytes = self.sketch(), None, 0
            return False
        if self.table is None or self.table.shape[1] != high - low + 1:
            table: NDArray[Any] = np.zeros((self.n_genes, high - low + 1), self.dtype)
            if self.table is not None:
                table[:, self.low - low : self.low - low + self.table.shape[1]] = self.table
            self.table, self.low = table, low
        return True

    def sketch(self) -> GeneSketch:
        """Everything counted, as a sparse sketch."""
        if self.table is None:
            return self.sparse
        return self.sparse.merge(GeneSketch.of_table(self.table, self.low, self.sparse.gamma))
