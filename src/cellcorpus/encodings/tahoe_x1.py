"""Tahoe-x1: every stored non-zero gene of the vocabulary with its raw count, in stored order, after a
`(<cls>, pad_value)` pair (`genes` int32, `expressions` float32), as the Tahoe-x1 reference scripts write it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from cellcorpus.config import HuggingfaceConfig
from cellcorpus.core.tokenize import CountScan, Ragged
from cellcorpus.encodings.base import CellRules, Column, Encoded, Prepared, UnitInput
from cellcorpus.errors import ConfigError

__all__ = ["TahoeX1"]

_INT16_MAX = (1 << 15) - 1


class TahoeX1:
    """The Tahoe-x1 recipe's tokenized cell (the default encoding)."""

    name: str = "tahoe_x1"
    columns: tuple[Column, ...] = (
        Column("genes", "int32", narrow="uint16"),
        Column("expressions", "float32", narrow="int16"),
    )
    value_dtype: Any = np.float32
    count_keys: tuple[str, ...] = ()
    columns_ascending: bool = False  # stored order, as the reference scripts keep it

    def __init__(self, hf: HuggingfaceConfig, vocab: dict[str, int]) -> None:
        self.hf, self.vocab = hf, vocab
        self.cls_id = vocab.get(hf.cls_token) if hf.add_cls_token else None
        self.vocab_size = max(vocab.values(), default=-1) + 1

    def check(self) -> None:
        """The CLS token must be in the vocabulary."""
        if self.hf.add_cls_token and self.cls_id is None:
            raise ConfigError(
                f"huggingface.cls_token: '{self.hf.cls_token}' is not in the vocabulary {self.hf.vocab_file}"
            )

    def prepare(self, unit: UnitInput) -> Prepared:
        """Nothing: every row is kept (the recipe's filters are the config's) and the parse is enough."""
        return Prepared()

    def encode(self, cells: Ragged, prepared: Prepared) -> Encoded:
        """The parse as it is; CLS and pad value are written first by the Arrow writer's gathers."""
        prefix = {"genes": self.cls_id, "expressions": self.hf.pad_value} if self.cls_id is not None else None
        return Encoded(cells.offsets, {"genes": cells.genes, "expressions": cells.expressions}, prefix=prefix)

    def narrow(self, scan: CountScan, summed: bool) -> dict[str, str]:
        """uint16 genes when every vocabulary id fits; int16 counts when they (and the pad value) are whole
        numbers int16 holds exactly (`summed`: colliding genes' counts were added, the scan no longer bounds them)."""
        out = {}
        if self.vocab_size <= 1 << 16:
            out["genes"] = "uint16"
        pad = self.hf.pad_value
        pad_ok = not self.hf.add_cls_token or (float(pad).is_integer() and -_INT16_MAX - 1 <= pad <= _INT16_MAX)
        if not summed and pad_ok and scan.n_fractional == 0 and scan.max_value <= _INT16_MAX:
            out["expressions"] = "int16"
        return out

    def export(self, split: str, data_files: list[str], root: Path) -> list[Path]:
        """None: the HF datasets (and MDS) are this model's layout."""
        return []

    def rules(self) -> CellRules:
        """Equal-length genes/expressions, ids in the vocabulary, `(<cls>, pad_value)` first when configured."""
        with_cls = self.cls_id is not None
        return CellRules(
            tokens="genes",
            values="expressions",
            vocab_size=self.vocab_size,
            first_token=self.cls_id,
            first_value=self.hf.pad_value if with_cls else None,
            special=int(with_cls),
        )
