"""`cellcorpus genes`: a dry run of gene-id matching, per input file, before hours of tokenization.

For every input: how many of its genes are in the vocabulary directly, through `gene_id_map` (its alias
columns included), ambiguously (the map gives several vocabulary ids), or not at all, how many share an id with
another gene (their counts would be summed), and the resulting coverage against `min_gene_coverage`. The
unmapped and ambiguous genes shown are those with the most counts in the file (one pass over its rows, in
units), so a highly expressed gene left out is seen first. Nothing is written.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cellcorpus.config import Config, HuggingfaceConfig
from cellcorpus.io.vocab import load_vocab
from cellcorpus.layout import Layout
from cellcorpus.sources.base import InputFile
from cellcorpus.sources.inputs import discover_and_inspect, input_format

__all__ = ["GeneCoverage", "run_genes"]


@dataclass(frozen=True)
class GeneCoverage:
    """One input file's gene matching."""

    path: str
    n_genes: int
    direct: int
    via_map: int
    ambiguous: int
    unmapped: int
    colliding: int
    coverage: float
    below_minimum: bool
    examples_unmapped: tuple[str, ...]  # the most counted first, "<id> (<counts>)"
    examples_ambiguous: tuple[str, ...]
    via_alias: int = 0  # of via_map: through gene_id_map's alias columns


_SHOWN = 5


def _gene_totals(hf: HuggingfaceConfig, f: InputFile) -> tuple[np.ndarray, np.ndarray]:
    """(gene ids, total counts per gene) of one input, read a unit of rows at a time."""
    fmt = input_format(hf)
    totals: np.ndarray | None = None
    var_ids = np.zeros(0, dtype=object)
    for start in range(0, f.n_obs, hf.unit_cells):
        block = fmt.read_block(f.path, start, min(start + hf.unit_cells, f.n_obs), hf)
        var_ids = block.var_ids
        part = np.bincount(block.indices, weights=block.data.astype(np.float64), minlength=len(var_ids))
        totals = part if totals is None else totals + part
    return var_ids, totals if totals is not None else np.zeros(len(var_ids))


def _most_counted(ids: np.ndarray, totals: np.ndarray, at: tuple[int, ...]) -> tuple[str, ...]:
    """The genes at positions `at` with the most counts, largest first (ties: file order)."""
    pos = np.array(at, dtype=np.int64)
    top = pos[np.argsort(-totals[pos], kind="stable")[:_SHOWN]]
    return tuple(f"{ids[i]} ({totals[i]:,.0f} counts)" for i in top)


def run_genes(cfg: Config) -> list[GeneCoverage]:
    """Coverage of every input file (no output); files below `min_gene_coverage` are flagged, not raised."""
    hf: HuggingfaceConfig = cfg.need("huggingface")
    vocab = load_vocab(hf.vocab_file)
    inputs, rep = discover_and_inspect(hf, vocab, Layout.of(cfg).decompressed, strict=False)
    rows = []
    for f in inputs:
        m = rep.mappings[f.rel_path]
        share = rep.coverage[f.rel_path]
        unmapped, ambiguous = m.unmapped, m.ambiguous
        if m.unmapped_at or m.ambiguous_at:
            ids, totals = _gene_totals(hf, f)
            unmapped = _most_counted(ids, totals, m.unmapped_at)
            ambiguous = _most_counted(ids, totals, m.ambiguous_at)
        rows.append(
            GeneCoverage(
                path=f.rel_path,
                n_genes=len(m.gene_map),
                direct=m.n_direct,
                via_map=m.n_via_table,
                ambiguous=m.n_ambiguous,
                unmapped=m.n_unmapped,
                colliding=m.n_colliding,
                coverage=share,
                below_minimum=share < hf.min_gene_coverage,
                examples_unmapped=unmapped,
                examples_ambiguous=ambiguous,
                via_alias=m.n_via_alias,
            )
        )
    return rows
