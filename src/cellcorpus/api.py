"""The Python API: what a notebook needs, with the CLI's semantics.

    >>> from cellcorpus import load_config, run_pipeline, tokenize_anndata, decode_id   # doctest: +SKIP

- `load_config(path_or_dict, overrides)`: a validated config (a YAML path or a dict of sections).
- `run_pipeline(cfg)` / `cellcorpus.stages.<stage>.run_<stage>(cfg)`: the stages, as `cellcorpus run` runs them.
- `tokenize_anndata(adata, vocab, ...)`: one in-memory AnnData -> a `pyarrow.Table` of tokenized cells with
  the same filters, joins, metadata and split as `cellcorpus tokenize` (the same unit code runs on it).
- `decode_id(cfg, id)`: an `id` back to (input file, row).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from cellcorpus.config import Config
from cellcorpus.core.ids import decode_ids
from cellcorpus.errors import ConfigError, InputError, MissingExtraError
from cellcorpus.formats.arrow import read_arrow
from cellcorpus.io.paths import join
from cellcorpus.layout import tokenize_publisher
from cellcorpus.manifest import TokenizeManifest

__all__ = ["tokenize_anndata", "decode_id"]


def decode_id(cfg: Config, cell_id: int) -> tuple[str, int]:
    """(input file path, row in that file) of a cell `id` of the dataset `cfg` describes.

    An id is `(file_index << 32) | row_in_file`; `file_index` is the input's position in the sorted listing,
    recorded in the tokenize manifest.
    """
    hf = cfg.need("huggingface")
    manifest = tokenize_publisher(hf).read_manifest("manifest.json", TokenizeManifest)
    if manifest is None:
        raise ConfigError(f"no tokenize manifest in {hf.merged_dataset_root}", hint="run `cellcorpus tokenize`")
    f, r = decode_ids(np.array([cell_id], dtype=np.int64))
    by_index = {i.file_index: i for i in manifest.inputs}
    record = by_index.get(int(f[0]))
    if record is None or not 0 <= int(r[0]) < record.n_obs:
        raise InputError(f"id {cell_id} is not a cell of this dataset (file {int(f[0])}, row {int(r[0])})")
    return join(hf.adata_dir, record.path), int(r[0])


def tokenize_anndata(
    adata: Any,
    vocab: dict[str, int],
    *,
    gene_col: str = "index",
    split: bool = False,
    file_index: int = 0,
    as_dataset: bool = False,
    **settings: Any,
) -> Any:
    """Tokenize an in-memory AnnData exactly as `cellcorpus tokenize` tokenizes the same file.

    `settings` are `huggingface:` keys (`obs_filter`, `filter_cells`, `obs_metadata_columns`,
    `additional_metadata_info`, `split_parameters`, `cls_token`, `pad_value`, `min_vocab_genes`, ...). Returns
    one `pyarrow.Table` of every kept cell in id order, or with `split=True` {"train": ..., "valid": ...} by the
    same seeded hash as the CLI; `as_dataset=True` gives `datasets.Dataset`s instead (needs `datasets`).
    The AnnData is written to a temporary h5ad and read back in row ranges by the
    tokenize unit itself, so nothing here can drift from the CLI.

    >>> import anndata as ad, numpy as np, pandas as pd
    >>> genes = ["ENSG00000000001", "ENSG00000000002", "ENSG00000000003"]
    >>> adata = ad.AnnData(np.array([[0, 4, 1], [2, 0, 0]], dtype=np.float32),
    ...                    obs=pd.DataFrame({"drug": ["a", "b"]}, index=["c0", "c1"]), var=pd.DataFrame(index=genes))
    >>> vocab = {"<pad>": 0, "<cls>": 1, "<eoc>": 2, **{g: 3 + i for i, g in enumerate(genes)}}
    >>> t = tokenize_anndata(adata, vocab, obs_metadata_columns=["drug"], split_parameters={"test_size": 0})
    >>> t.to_pylist()[0]
    {'genes': [1, 4, 5], 'expressions': [-2.0, 4.0, 1.0], 'id': 0, 'drug': 'a', 'index': 'c0'}
    """
    from cellcorpus.config import HuggingfaceConfig
    from cellcorpus.io.atomic import write_json_atomic
    from cellcorpus.sources.inputs import discover_and_inspect, obs_index_column
    from cellcorpus.stages.tokenize import plan_tokenize, tokenize_unit
    from cellcorpus.stages.tokenize_finalize import TokenizeContext

    with tempfile.TemporaryDirectory(prefix="cellcorpus-api-") as tmp:
        root = Path(tmp)
        (root / "raw").mkdir()
        adata.write_h5ad(root / "raw" / "cells.h5ad")
        write_json_atomic(root / "vocab.json", vocab, sort_keys=False)
        try:
            hf = HuggingfaceConfig.model_validate(
                {
                    "adata_dir": str(root / "raw"),
                    "output_root": str(root / "work"),
                    "merged_dataset_root": str(root / "merged"),
                    "vocab_output_root": str(root),
                    "vocab_path": "vocab.json",
                    "gene_col": gene_col,
                    **settings,
                }
            )
        except Exception as exc:
            raise ConfigError(f"tokenize_anndata: {exc}") from exc
        inputs, _ = discover_and_inspect(hf, vocab)
        index_column = obs_index_column(hf, inputs[0])
        ctx = TokenizeContext(
            hf=hf,
            vocab_file=str(root / "vocab.json"),
            parts_dir=str(root / "parts"),
            metadata_columns=tuple(hf.metadata_columns(index_column)),
            index_column=index_column,
            n_buckets=(),
        )
        tables: dict[str, list[pa.Table]] = {"train": [], "valid": []}
        for unit in plan_tokenize(hf, inputs):
            unit = type(unit)(unit.unit_id, unit.path, file_index, unit.row_start, unit.row_stop, unit.checksum)
            tokenize_unit(unit, ctx)
            for name in tables:
                tables[name].append(read_arrow(root / "parts" / name / f"{unit.unit_id}.arrow"))
        out = {name: pa.concat_tables(parts) if parts else None for name, parts in tables.items()}
        # materialise before the temporary folder (and the memory-mapped parts in it) goes away
        result = {name: pa.table(t.to_pydict(), schema=t.schema) for name, t in out.items() if t is not None}
    if not split:
        result = {"all": pa.concat_tables([result["train"], result["valid"]]).sort_by([("id", "ascending")])}
    if as_dataset:
        try:
            import datasets
        except ImportError as exc:
            raise MissingExtraError("as_dataset=True needs HF datasets", hint="pip install 'cellcorpus[hf]'") from exc
        result = {k: datasets.Dataset(t) for k, t in result.items()}
    return result if split else result["all"]
