"""What a tokenize unit reads, whatever the source: CSR rows + column gene ids + obs column getter."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["InputFile", "RawBlock"]


@dataclass(frozen=True)
class InputFile:
    """One discovered input file; `file_index` is its position in the sorted listing (goes into ids)."""

    path: str
    rel_path: str
    file_index: int
    n_obs: int
    n_bytes: int
    checksum: str


@dataclass
class RawBlock:
    """Rows of one unit: CSR arrays (indptr from 0), gene id per column, the obs columns asked for.

    `obs` always holds the key `index` (the obs index); `obs_index_name` is its name in the file.
    """

    indptr: np.ndarray
    indices: np.ndarray
    data: np.ndarray
    var_ids: np.ndarray
    obs: dict[str, np.ndarray]
    obs_index_name: str
