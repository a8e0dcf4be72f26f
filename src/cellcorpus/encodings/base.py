"""The seam between the one parse of an atlas and each model's cell encoding.

Every encoding starts from the same parse (`core.tokenize.tokenize_csr`: a unit's cells as vocabulary ids and
raw counts in stored order, zeros and unknown genes dropped, colliding genes summed) and turns it into the
columns its model reads. Stages ask the encoding (its columns, its kernel, its checks, its statistics) and
never branch on its name: adding an encoding is one module and one line in `encodings/__init__.py`
(`docs/encodings.md` walks through the Geneformer module as the example).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from cellcorpus.config import HuggingfaceConfig
from cellcorpus.core.tokenize import CountScan, Ragged

__all__ = ["Column", "CellRules", "Encoded", "CellEncoding", "Prepared", "UnitInput"]


@dataclass(frozen=True)
class Column:
    """One output column an encoding writes: its name, the dtype of its values (numpy and HF `Value` name), whether
    each cell holds a list of them, and a narrower dtype its shuffle parts may hold when every value fits."""

    name: str
    dtype: str
    is_list: bool = True
    narrow: str | None = None


@dataclass(frozen=True)
class CellRules:
    """What `verify` checks on every cell and what `report` reads, as data (no encoding names in those stages)."""

    tokens: str  # the list column of token ids
    vocab_size: int  # token ids lie in [0, vocab_size)
    values: str | None = None  # a list column of per-token values, as long as `tokens`
    first_token: int | None = None  # every cell starts with this token (CLS)
    first_value: float | None = None  # ... beside this value
    last_token: int | None = None  # every cell ends with this token (EOS)
    max_length: int | None = None  # at most this many tokens per cell
    length: str | None = None  # a scalar column holding each cell's number of tokens
    special: int = 0  # tokens per cell that are not genes (CLS, EOS): the report counts genes without them


@dataclass(frozen=True)
class UnitInput:
    """A unit's rows as read, before the raw block is released: what an encoding may need besides the parse."""

    indptr: NDArray[Any]
    indices: NDArray[Any]
    data: NDArray[Any]  # every stored count, in the input's dtype
    obs: dict[str, NDArray[Any]]  # the obs columns read (raw dtypes)
    path: str


@dataclass(frozen=True)
class Prepared:
    """`CellEncoding.prepare`'s result: rows to keep (None: all), their tally, per-cell values for `encode`."""

    keep: NDArray[np.bool_] | None = None
    counts: dict[str, int] = field(default_factory=dict)
    per_cell: dict[str, NDArray[Any]] = field(default_factory=dict)


@dataclass
class Encoded:
    """A unit's cells as an encoding's columns: lists share `offsets`; scalars hold one value per cell.

    `prefix`: values the Arrow writer puts first in each list as it gathers rows (the CLS token without an
    insertion pass over every token)."""

    offsets: NDArray[np.int64]
    lists: dict[str, NDArray[Any]]
    scalars: dict[str, NDArray[Any]] = field(default_factory=dict)
    prefix: dict[str, Any] | None = None
    counts: dict[str, int] = field(default_factory=dict)  # the encoding's own tallies (manifest totals)

    @property
    def n_cells(self) -> int:
        """Cells in the unit."""
        return len(self.offsets) - 1


class CellEncoding(Protocol):
    """One model's cell encoding (see the module docstring)."""

    name: str
    columns: tuple[Column, ...]  # in output order; `id` and the metadata columns follow
    value_dtype: Any  # the dtype the parse keeps counts in (None: the input's own)
    count_keys: tuple[str, ...]  # tallies `prepare`/`encode` add to the manifest's totals
    columns_ascending: bool  # the parse lists each cell's genes in ascending file column (else: stored order)

    def __init__(self, hf: HuggingfaceConfig, vocab: dict[str, int]) -> None:
        """An encoding is built from the huggingface section and the vocabulary (token -> id)."""

    def check(self) -> None:
        """Raise ConfigError before any worker starts (a special token missing from the vocabulary, ...)."""

    def prepare(self, unit: UnitInput) -> Prepared:
        """What the encoding takes from the raw rows before they are released: rows it drops itself
        (Geneformer's `filter_pass`) and per-cell values `encode` needs (its cells' totals)."""

    def encode(self, cells: Ragged, prepared: Prepared) -> Encoded:
        """The unit's cells (every row read, in order) as this encoding's columns. Vectorised."""

    def narrow(self, scan: CountScan, summed: bool) -> dict[str, str]:
        """Columns the shuffle's parts may hold in their `narrow` dtype for this unit (values known to fit)."""

    def rules(self) -> CellRules:
        """The per-cell checks and statistics."""

    def export(self, split: str, data_files: list[str], root: Path) -> list[Path]:
        """Further outputs of a finished split in the model's own layout, under the merged root `root` (scGPT's
        scBank folder), from the split's data files in order (paths, or URLs under a remote root); the files
        written (published by the caller). Most encodings write none."""
