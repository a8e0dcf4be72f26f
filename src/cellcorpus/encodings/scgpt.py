"""scGPT: each cell's non-zero genes of the vocabulary in ascending gene order with their raw counts, after
`<cls>` with `cls_value`: what `scgpt.tokenizer.tokenize_batch(..., append_cls=True, include_zero_gene=False)`
returns (genes int64 -> `genes` int32 here, counts float32), and what scGPT's pretraining reads from scBank
after its `cls_prefix` step (`cls_value` = its pad value, -2); with `scgpt.scbank` also scBank's own folders.
scGPT's vocabulary is keyed by gene symbols
(`default_census_vocab.json` + `<pad>`, `<cls>`, `<eoc>`); Ensembl-keyed inputs reach it through
`gene_id_map`. Binning is scGPT's `DataCollator`'s at training time, or stored (`scgpt.binning`: a `bins`
column, `core/binning.py`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from cellcorpus.config import HuggingfaceConfig
from cellcorpus.core.binning import quantile_bins
from cellcorpus.core.tokenize import CountScan, Ragged
from cellcorpus.encodings.base import CellRules, Column, Encoded, Prepared, UnitInput
from cellcorpus.errors import ConfigError
from cellcorpus.formats.scbank import SCBANK_MARKER, write_scbank

__all__ = ["ScGPT"]

CLS = "<cls>"


class ScGPT:
    """`encoding: scgpt` (see the module docstring)."""

    name: str = "scgpt"
    columns: tuple[Column, ...] = (Column("genes", "int32", narrow="uint16"), Column("expressions", "float32"))
    value_dtype: Any = np.float32
    count_keys: tuple[str, ...] = ()
    columns_ascending: bool = True  # tokenize_batch takes np.nonzero of each dense row: ascending gene order

    def __init__(self, hf: HuggingfaceConfig, vocab: dict[str, int]) -> None:
        self.hf, self.vocab = hf, vocab
        self.cls_value = hf.scgpt.cls_value if hf.scgpt is not None else -2.0
        self.n_bins = hf.scgpt.binning.n_bins if hf.scgpt is not None and hf.scgpt.binning else None
        if self.n_bins is not None:
            self.columns = (*ScGPT.columns, Column("bins", "float32"))
        self.cls_id = vocab.get(CLS)
        self.vocab_size = max(vocab.values(), default=-1) + 1

    def check(self) -> None:
        """`<cls>` must be in the vocabulary (scGPT appends it to its gene vocabulary)."""
        if self.cls_id is None:
            raise ConfigError(
                f"huggingface.encoding: scgpt needs {CLS} in the vocabulary {self.hf.vocab_file}",
                hint="add <pad>, <cls> and <eoc> after the genes, as scGPT's GeneVocab.append_token does",
            )

    def prepare(self, unit: UnitInput) -> Prepared:
        """Nothing: every row is kept and the parse is enough."""
        return Prepared()

    def encode(self, cells: Ragged, prepared: Prepared) -> Encoded:
        """The parse in ascending gene order; `<cls>` and `cls_value` written first by the Arrow writer."""
        prefix = {"genes": self.cls_id, "expressions": self.cls_value}
        lists = {"genes": cells.genes, "expressions": cells.expressions}
        if self.n_bins is not None:  # the stored binning, after the same CLS value
            lists["bins"] = quantile_bins(cells.offsets, cells.expressions, self.n_bins)
            prefix["bins"] = self.cls_value
        return Encoded(cells.offsets, lists, prefix=prefix)

    def narrow(self, scan: CountScan, summed: bool) -> dict[str, str]:
        """uint16 genes in the shuffle's parts when every vocabulary id fits (scGPT's ~60k symbols do)."""
        return {"genes": "uint16"} if self.vocab_size <= 1 << 16 else {}

    def export(self, split: str, data_files: list[str], root: Path) -> list[Path]:
        """With `scgpt.scbank`, the split as scBank's `<split>.scb/` folder (`formats/scbank.py`)."""
        if self.hf.scgpt is None or not self.hf.scgpt.scbank:
            return []
        dest = root / f"{split}.scb"
        write_scbank(data_files, dest, self.vocab, "genes", "expressions", skip=1)
        return [dest / name for name in ("counts.datatable.parquet", "gene_vocab.json", "studytable.json")] + [
            dest / SCBANK_MARKER
        ]

    def rules(self) -> CellRules:
        """Equal-length genes/expressions, ids in the vocabulary, `(<cls>, cls_value)` first."""
        return CellRules(
            tokens="genes",
            values="expressions",
            vocab_size=self.vocab_size,
            first_token=self.cls_id,
            first_value=self.cls_value,
            special=1,
        )
