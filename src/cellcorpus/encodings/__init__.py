"""Cell encodings: one module each, registered here (`huggingface.encoding` picks one; see `base.py`)."""

from __future__ import annotations

from cellcorpus.config import HuggingfaceConfig
from cellcorpus.encodings.base import CellEncoding, CellRules, Column, Encoded, Prepared, UnitInput
from cellcorpus.encodings.geneformer import Geneformer
from cellcorpus.encodings.scgpt import ScGPT
from cellcorpus.encodings.tahoe_x1 import TahoeX1
from cellcorpus.formats.arrow import CellColumns

__all__ = [
    "ENCODINGS",
    "encoding_for",
    "column_specs",
    "produced_columns",
    "CellEncoding",
    "CellRules",
    "Column",
    "Encoded",
    "Prepared",
    "UnitInput",
]

ENCODINGS: dict[str, type[CellEncoding]] = {
    "tahoe_x1": TahoeX1,
    "geneformer": Geneformer,
    "scgpt": ScGPT,
}


def produced_columns(hf: HuggingfaceConfig) -> tuple[str, ...]:
    """The columns tokenize writes under this config's encoding: the encoding's, then `id`."""
    columns: tuple[Column, ...] = ENCODINGS[hf.encoding].columns  # a class attribute: no vocabulary
    return (*(c.name for c in columns), "id")


def column_specs(encoding: CellEncoding) -> CellColumns:
    """The encoding's columns as the Arrow writer takes them: (name, dtype, one list per cell)."""
    return tuple((c.name, c.dtype, c.is_list) for c in encoding.columns)


def encoding_for(hf: HuggingfaceConfig, vocab: dict[str, int]) -> CellEncoding:
    """The encoding `hf.encoding` names, for this vocabulary."""
    return ENCODINGS[hf.encoding](hf, vocab)
