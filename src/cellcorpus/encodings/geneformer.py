"""Geneformer's rank-value encoding (V1: the 30M series; V2: the 95M/104M series, `<cls>` ... `<eos>`).

Per cell, as Geneformer's `TranscriptomeTokenizer.tokenize_anndata` computes it: each count is normalised
by the cell's total (`n_counts` from obs when present, else the sum of every count the cell stores) times
`target_sum`, then by the gene's non-zero median; genes without a median are left out; the non-zero values
are ranked in descending order and the ranked gene tokens truncated to `model_input_size` (V2 keeps `<cls>`
and `<eos>` inside it). Output as its `create_dataset` writes it: `input_ids` (int64 lists) and `length`.

The arithmetic is the reference's own, in its dtypes and order: the reference divides a scipy sparse matrix
by dense vectors, which scipy computes as a product with their reciprocals (`x * (1/n)`, then `* target_sum`,
then `* (1/median)`), each step in the dtype NumPy gives it. Reproduced element for element, so every value
is bit-equal and the ranks equal, ties included (`core/rank.py`).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import scipy.sparse as sp
from numpy.typing import NDArray

from cellcorpus.config import GeneformerSettings, HuggingfaceConfig
from cellcorpus.core.rank import cell_rows, rank_scaled, rank_tokens
from cellcorpus.core.tokenize import CountScan, Ragged
from cellcorpus.encodings.base import CellRules, Column, Encoded, Prepared, UnitInput
from cellcorpus.errors import ConfigError, InputError
from cellcorpus.formats.lengths import write_lengths
from cellcorpus.formats.mds.safe_pickle import UnsafePickleError, load_mapping

__all__ = ["Geneformer", "load_gene_medians"]

CLS, EOS = "<cls>", "<eos>"
# gene entries per slice of the NumPy passes (Geneformer._encode_slices); tests shrink it to cross slices
_SLICE_ENTRIES = 1 << 15


def load_gene_medians(path: str) -> dict[str, Any]:
    """Gene id -> non-zero median: Geneformer's pickle (read without executing it) or `cellcorpus stats`'s
    parquet (columns gene_id, median)."""
    if not os.path.isfile(path):
        raise ConfigError(f"huggingface.geneformer.gene_median: file not found: {path}",
                          hint="Geneformer's gene_median_dictionary.pkl, or run `cellcorpus stats CONFIG`")  # fmt: skip
    if path.endswith((".parquet", ".pq")):
        table = pq.read_table(path, columns=["gene_id", "median"])
        return dict(zip(table.column("gene_id").to_pylist(), table.column("median").to_numpy(), strict=True))
    with open(path, "rb") as f:
        data = f.read()
    try:
        medians = load_mapping(data, path)
    except UnsafePickleError as exc:
        raise InputError(str(exc), hint="a gene median file is a pickled dict of gene id -> number") from None
    return medians


@functools.lru_cache(maxsize=4)
def _medians_by_token(path: str, stamp: int, vocab_items: tuple[tuple[str, int], ...]) -> NDArray[Any]:
    """Median per vocabulary id (NaN: none), in the dtype NumPy gives the reference's list of medians."""
    del stamp  # cache key only
    medians = load_gene_medians(path)
    size = max((i for _, i in vocab_items), default=-1) + 1
    known = [(i, medians[g]) for g, i in vocab_items if g in medians]
    dtype = np.array([m for _, m in known]).dtype if known else np.dtype(np.float64)
    if dtype.kind != "f":
        dtype = np.dtype(np.float64)
    out = np.full(size, np.nan, dtype=dtype)
    if known:
        ids, values = zip(*known, strict=True)
        out[list(ids)] = values
    return out


class Geneformer:
    """`encoding: geneformer` (see the module docstring)."""

    name: str = "geneformer"
    columns: tuple[Column, ...] = (
        Column("input_ids", "int64", narrow="uint16"),
        Column("length", "int64", is_list=False),
    )
    value_dtype: Any = None  # the input's own: the reference computes in the counts' dtype
    count_keys: tuple[str, ...] = ("filtered_filter_pass", "entries_without_median", "cells_with_tied_values")
    # the reference ranks scipy's canonical rows (its arithmetic re-sorts them): tied values keep column order
    columns_ascending: bool = True

    def __init__(self, hf: HuggingfaceConfig, vocab: dict[str, int]) -> None:
        if hf.geneformer is None:
            raise ConfigError("huggingface.encoding: geneformer needs a huggingface.geneformer section")
        self.hf, self.vocab, self.gf = hf, vocab, hf.geneformer
        self.vocab_size = max(vocab.values(), default=-1) + 1
        self.cls_id = vocab.get(CLS) if self.gf.special_tokens else None
        self.eos_id = vocab.get(EOS) if self.gf.special_tokens else None

    @property
    def settings(self) -> GeneformerSettings:
        """The `geneformer` section."""
        return self.gf

    def check(self) -> None:
        """V2 needs `<cls>` and `<eos>` in the token dictionary; the median file must be readable."""
        if self.gf.special_tokens and (self.cls_id is None or self.eos_id is None):
            raise ConfigError(
                f"huggingface.geneformer.special_tokens: {CLS} and {EOS} must be in the vocabulary "
                f"{self.hf.vocab_file}",
                hint="use Geneformer's V2 token dictionary, or special_tokens: false for the 30M (V1) series",
            )
        self._medians()

    def _medians(self) -> NDArray[Any]:
        path = self.gf.gene_median
        stamp = os.stat(path).st_mtime_ns if os.path.isfile(path) else 0
        return _medians_by_token(path, stamp, tuple(sorted(self.vocab.items())))

    def prepare(self, unit: UnitInput) -> Prepared:
        """Cells whose `filter_pass` is 1 when the file has that obs column (as `i == 1` in the reference), and
        each cell's total: obs `n_counts` as stored, else scipy's own row sum over every stored count (the
        reference's `X.sum(axis=1)`, in its dtype and order)."""
        n_cells = len(unit.indptr) - 1
        given = unit.obs.get(self.gf.n_counts_column)
        if given is not None:
            n_counts = np.asarray(given).reshape(-1)
        else:
            n_cols = int(unit.indices.max(initial=-1)) + 1
            matrix = sp.csr_matrix((unit.data, unit.indices, unit.indptr), shape=(n_cells, n_cols))
            n_counts = np.asarray(matrix.sum(axis=1)).reshape(-1)
        flags = unit.obs.get(self.gf.filter_pass_column)
        keep = None if flags is None else np.asarray(flags == 1, dtype=bool).reshape(-1)
        dropped = 0 if keep is None else int(np.count_nonzero(~keep))
        return Prepared(keep, {"filtered_filter_pass": dropped}, {"n_counts": n_counts})

    def encode(self, cells: Ragged, prepared: Prepared) -> Encoded:
        """Normalise, rank and truncate the unit's cells: in compiled passes that key each value as they compute
        it (`core/rank.py::rank_scaled`), or in NumPy passes over slices where the arithmetic is float16. Memory
        is the unit's output and a bounded buffer of keys, whatever the unit's size."""
        reciprocals = np.divide(1, self._medians())  # per token, as the reference divides by each median
        reciprocals[np.isnan(reciprocals)] = 0  # no median: the gene's values become 0 and are left out
        n_counts = prepared.per_cell["n_counts"]
        limit = self.gf.model_input_size - (2 if self.gf.special_tokens else 0)
        ranked = rank_scaled(cells.offsets, cells.expressions, cells.genes, np.divide(1, n_counts),
                             self.gf.target_sum, reciprocals, limit, self.cls_id, self.eos_id)  # fmt: skip
        if ranked is not None:  # float32/float64 arithmetic (the usual): compiled, values never stored
            out_offsets, input_ids, tied, without = ranked
        else:
            out_offsets, input_ids, tied, without = self._encode_slices(cells, n_counts, reciprocals)
        counts = {"entries_without_median": without, "cells_with_tied_values": tied}
        return Encoded(out_offsets, {"input_ids": input_ids}, {"length": np.diff(out_offsets)}, counts=counts)

    def _encode_slices(
        self, cells: Ragged, n_counts: NDArray[Any], reciprocals: NDArray[Any]
    ) -> tuple[NDArray[np.int64], NDArray[np.int64], int, int]:
        """`encode` in NumPy passes, a slice of ~`_SLICE_ENTRIES` entries at a time (its temporaries stay in the
        CPU's cache): for float16 arithmetic, or token ids too wide to pack with the values."""
        cuts = np.searchsorted(cells.offsets, np.arange(0, int(cells.offsets[-1]), _SLICE_ENTRIES), side="right") - 1
        bounds = np.unique(np.r_[0, cuts, cells.n_cells])
        offsets, tied, without = [np.zeros(1, np.int64)], 0, 0
        extra = 2 if self.gf.special_tokens else 0
        ids = np.empty(int(cells.offsets[-1]) + extra * cells.n_cells, np.int64)  # at most: filled slice by slice
        for lo, hi in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True):
            a, b = int(cells.offsets[lo]), int(cells.offsets[hi])
            part = Ragged(cells.offsets[lo : hi + 1] - a, cells.genes[a:b], cells.expressions[a:b])
            at = int(offsets[-1][-1])
            got_offsets, n_tied, n_without = self._encode_slice(part, n_counts[lo:hi], reciprocals, ids[at:])
            offsets.append(got_offsets[1:] + at)
            tied, without = tied + n_tied, without + n_without
        out_offsets = np.concatenate(offsets)
        return out_offsets, ids[: int(out_offsets[-1])], tied, without

    def _encode_slice(
        self, cells: Ragged, n_counts: NDArray[Any], reciprocals: NDArray[Any], into: NDArray[np.int64]
    ) -> tuple[NDArray[np.int64], int, int]:
        """(offsets, cells with ties, entries without a median) of consecutive cells, their input_ids written at
        the start of `into`. A gene without a median has reciprocal 0 here, so its value is 0 and it leaves with
        any zero (one check for both)."""
        from cellcorpus.core.rank_kernels import scaled_values  # (compiled: loaded where used)

        genes, counts = cells.genes, cells.expressions
        per_cell = np.divide(1, n_counts)
        # count x (1 / total) x target_sum x (1 / median), each product in the reference's dtype, in one pass
        values, not_positive = scaled_values(cells.offsets, counts, genes, per_cell, self.gf.target_sum, reciprocals)
        n_without = 0
        if not_positive:  # genes without a median, an underflow (or NaN): new lengths
            keep = values > 0  # (NaN too: a cell total of 0 times a missing median)
            n_without = int(np.count_nonzero(reciprocals[genes] == 0))
            rows = cell_rows(cells.offsets)[keep]
            values, genes = values[keep], genes[keep]
            offsets = np.zeros(cells.n_cells + 1, dtype=np.int64)
            np.cumsum(np.bincount(rows, minlength=cells.n_cells), out=offsets[1:])
        else:
            offsets = cells.offsets
        limit = self.gf.model_input_size - (2 if self.gf.special_tokens else 0)
        out_offsets, _, n_tied = rank_tokens(offsets, values, genes, limit, self.cls_id, self.eos_id, into=into)
        return out_offsets, n_tied, n_without

    def narrow(self, scan: CountScan, summed: bool) -> dict[str, str]:
        """uint16 token ids in the shuffle's parts when the vocabulary allows (Geneformer's has ~25k-40k)."""
        return {"input_ids": "uint16"} if self.vocab_size <= 1 << 16 else {}

    def export(self, split: str, data_files: list[str], root: Path) -> list[Path]:
        """`<split>_lengths.pkl`: every cell's length in the dataset's order, the list Geneformer's pretrainer
        reads as its `example_lengths_file` (`formats/lengths.py`)."""
        dest = root / f"{split}_lengths.pkl"
        write_lengths(data_files, "length", dest)
        return [dest]

    def rules(self) -> CellRules:
        """Ids in the vocabulary, at most model_input_size, `length` equal to the list's, V2's first and last."""
        return CellRules(
            tokens="input_ids",
            vocab_size=self.vocab_size,
            first_token=self.cls_id,
            last_token=self.eos_id,
            max_length=self.gf.model_input_size,
            length="length",
            special=2 if self.gf.special_tokens else 0,
        )
