"""Gene-id harmonization: an input's gene ids (symbols, versioned or retired Ensembl ids) -> vocabulary ids.

A value already in the vocabulary (version suffix ignored) maps directly. Otherwise the map table is asked:
a value whose table rows lead to exactly one vocabulary id maps to it; several vocabulary ids make it
ambiguous and no table row leading into the vocabulary leaves it unmapped — both are counted, never guessed.
Two input genes reaching the same id collide; the tokenizer then sums their counts in each cell.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from cellcorpus.core.vocab import VocabLookup, strip_version

__all__ = ["IdMap", "GeneMapping", "harmonize", "merge_duplicate_tokens"]


class IdMap:
    """A map table reduced to what matters for one vocabulary: source value -> candidate vocabulary ids.

    `split`: a regular expression; a source cell may hold several names separated by it (HGNC's complete set
    writes `prev_symbol` as "A|B", its custom downloads and BioMart as "A, B")."""

    def __init__(
        self, sources: NDArray[Any], targets: NDArray[Any], lookup: VocabLookup, split: str | None = None
    ) -> None:
        frame = pd.DataFrame({"source": np.asarray(sources, dtype=object), "target": np.asarray(targets, dtype=object)})
        frame = frame.dropna()
        if split is not None:  # one row per name
            frame = frame.assign(source=frame["source"].astype(str).str.split(split, regex=True)).explode("source")
        src = strip_version(frame["source"].astype(str).str.strip().to_numpy())
        tok = lookup.map_genes(frame["target"].astype(str).str.strip().to_numpy())
        pairs = pd.DataFrame({"source": src, "token": tok})
        pairs = pairs[(pairs["token"] >= 0) & (pairs["source"] != "")].drop_duplicates()
        grouped = pairs.groupby("source", sort=True)["token"]
        n_ids = grouped.nunique()
        self._index = pd.Index(n_ids.index)
        self._n_ids = n_ids.to_numpy()
        self._first = grouped.min().reindex(n_ids.index).to_numpy().astype(np.int32)

    def lookup(self, values: NDArray[Any]) -> tuple[NDArray[Any], NDArray[Any]]:
        """(vocabulary id or -1, number of candidate ids) per value, vectorised."""
        pos = self._index.get_indexer(strip_version(values))
        hit = pos >= 0
        n = np.zeros(len(values), dtype=np.int64)
        n[hit] = self._n_ids[pos[hit]]
        token = np.full(len(values), -1, dtype=np.int32)
        unique = hit.copy()
        unique[hit] = n[hit] == 1
        token[unique] = self._first[pos[unique]]
        return token, n


@dataclass(frozen=True)
class GeneMapping:
    """Vocabulary id per input gene (-1 = not tokenized) and how each gene got there."""

    gene_map: NDArray[Any]
    n_direct: int
    n_via_table: int
    n_ambiguous: int
    n_unmapped: int
    n_colliding: int  # genes sharing their vocabulary id with another gene of the same file
    ambiguous: tuple[str, ...]  # a few examples for messages
    unmapped: tuple[str, ...]
    n_via_alias: int = 0  # of n_via_table: found through an alias column (a previous or other symbol)
    ambiguous_at: tuple[int, ...] = ()  # positions (file columns) of every ambiguous gene
    unmapped_at: tuple[int, ...] = ()  # ... of every unmapped gene

    def counts(self) -> dict[str, int]:
        """Per-file gene counts under the names the manifest and report use."""
        return {
            "genes_direct": self.n_direct,
            "genes_via_map": self.n_via_table,
            "genes_ambiguous": self.n_ambiguous,
            "genes_unmapped": self.n_unmapped,
            "genes_colliding": self.n_colliding,
        }


def harmonize(
    var_ids: NDArray[Any], lookup: VocabLookup, id_map: IdMap | None, alias_map: IdMap | None = None
) -> GeneMapping:
    """Map an input's gene ids into the vocabulary, directly first, then through `id_map`, then (for values the
    table does not name at all) through `alias_map` (previous or alternative symbols)."""
    values = np.asarray(var_ids, dtype=object)
    direct = lookup.map_genes(values)
    gene_map = direct.copy()
    ambiguous = np.zeros(len(values), dtype=bool)
    missing = direct < 0
    if id_map is not None and missing.any():
        token, n = id_map.lookup(values[missing])
        gene_map[missing] = token
        ambiguous[np.flatnonzero(missing)[n > 1]] = True
    n_alias = 0
    if alias_map is not None:
        left = np.flatnonzero((gene_map < 0) & ~ambiguous)  # named by no current symbol: try the aliases
        token, n = alias_map.lookup(values[left])
        gene_map[left] = token
        ambiguous[left[n > 1]] = True
        n_alias = int(np.count_nonzero(token >= 0))
    via = (direct < 0) & (gene_map >= 0)
    unmapped = (gene_map < 0) & ~ambiguous
    mapped = gene_map[gene_map >= 0]
    uniq, counts = np.unique(mapped, return_counts=True)
    n_colliding = int(counts[counts > 1].sum())
    return GeneMapping(
        gene_map=gene_map,
        n_direct=int(np.count_nonzero(direct >= 0)),
        n_via_table=int(np.count_nonzero(via)),
        n_ambiguous=int(np.count_nonzero(ambiguous)),
        n_unmapped=int(np.count_nonzero(unmapped)),
        n_colliding=n_colliding,
        ambiguous=tuple(str(v) for v in values[ambiguous][:5]),
        unmapped=tuple(str(v) for v in values[unmapped][:5]),
        n_via_alias=n_alias,
        ambiguous_at=tuple(np.flatnonzero(ambiguous).tolist()),
        unmapped_at=tuple(np.flatnonzero(unmapped).tolist()),
    )


def merge_duplicate_tokens(
    offsets: NDArray[Any], genes: NDArray[Any], expressions: NDArray[Any]
) -> tuple[NDArray[Any], NDArray[Any], NDArray[Any], int]:
    """Within each cell, sum the values of repeated tokens into the first occurrence (stored order kept).

    Returns (offsets, genes, expressions, entries merged away). Vectorised over the whole batch: a
    (cell, token) key per entry, its first position and a weighted bincount for the sums.
    """
    lengths = np.diff(offsets)
    row = np.repeat(np.arange(len(lengths), dtype=np.int64), lengths)
    key = row * (int(genes.max(initial=0)) + 1) + genes.astype(np.int64)
    _, first, inverse = np.unique(key, return_index=True, return_inverse=True)
    n_merged = len(genes) - len(first)
    if n_merged == 0:
        return offsets, genes, expressions, 0
    sums = np.bincount(inverse, weights=expressions.astype(np.float64))
    keep = np.sort(first)
    new_lengths = np.bincount(row[keep], minlength=len(lengths))
    new_offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(new_lengths, out=new_offsets[1:])
    return new_offsets, genes[keep], sums[inverse[keep]].astype(expressions.dtype), n_merged
