"""`cellcorpus genes`: a dry run of gene-id matching, per input file, before hours of tokenization.

For every input: how many of its genes are in the vocabulary directly, through `gene_id_map`, ambiguously
(the map gives several vocabulary ids), or not at all, how many share an id with another gene (their counts
would be summed), and the resulting coverage against `min_gene_coverage`. Nothing is written.
"""

from __future__ import annotations

from dataclasses import dataclass

from cellcorpus.config import Config, HuggingfaceConfig
from cellcorpus.io.vocab import load_vocab
from cellcorpus.layout import Layout
from cellcorpus.sources.inputs import discover_and_inspect

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
    examples_unmapped: tuple[str, ...]
    examples_ambiguous: tuple[str, ...]


def run_genes(cfg: Config) -> list[GeneCoverage]:
    """Coverage of every input file (no output); files below `min_gene_coverage` are flagged, not raised."""
    hf: HuggingfaceConfig = cfg.need("huggingface")
    vocab = load_vocab(hf.vocab_file)
    inputs, rep = discover_and_inspect(hf, vocab, Layout.of(cfg).decompressed, strict=False)
    rows = []
    for f in inputs:
        m = rep.mappings[f.rel_path]
        share = rep.coverage[f.rel_path]
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
                examples_unmapped=m.unmapped,
                examples_ambiguous=m.ambiguous,
            )
        )
    return rows
