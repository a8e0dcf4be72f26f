"""The Python API: what a notebook needs, with the CLI's semantics.

    >>> from cellcorpus import load_config, run_pipeline, tokenize_anndata, decode_id   # doctest: +SKIP

- `load_config(path_or_dict, overrides)`: a validated config (a YAML path or a dict of sections).
- `run_pipeline(cfg)` / `cellcorpus.stages.<stage>.run_<stage>(cfg)`: the stages, as `cellcorpus run` runs them,
  when called (a list of summaries); `iter_pipeline(cfg)` yields each summary as its stage ends. Worker
  processes need no `if __name__ == "__main__":` guard in the calling script. `run_pipeline(cfg, append=True)`
  adds new input files to the finished corpus, as `cellcorpus run --append`.
- `tokenize_anndata(adata, vocab, ...)`: one in-memory AnnData -> a `pyarrow.Table` of tokenized cells with
  the same filters, joins, metadata and split as `cellcorpus tokenize` (the same unit code runs on it).
- `decode_id(cfg, id)`: an `id` back to (input file, row).
- `build_vocab(reference, ...)`: the vocabulary `cellcorpus vocab` builds, as a dict (for `tokenize_anndata`).
- `mix(configs, proportions=..., caps=..., out=...)`: a training mixture of finished corpora, as `cellcorpus mix`.
- `dedup(cfg, against=[...])`: duplicate cells within a corpus and against others, as `cellcorpus dedup`.
"""

from __future__ import annotations

from typing import Any

from cellcorpus.config import Config
from cellcorpus.errors import MissingExtraError

__all__ = ["tokenize_anndata", "decode_id", "build_vocab", "mix", "dedup"]


def build_vocab(
    reference: Any,
    *,
    use_col: str = "index",
    symbol_col: str | None = None,
    special_tokens: tuple[str, ...] = ("<pad>", "<cls>", "<eoc>"),
    add_junk_tokens: bool = False,
) -> dict[str, int]:
    """The vocabulary `cellcorpus vocab` builds (specials first, then the unique Ensembl ids, versions stripped,
    sorted), from a reference: an `.h5ad` or gene table path (`use_col`: its var / table column), an in-memory
    AnnData (`use_col` of its var, `index` = var names), or a list of gene ids.

    >>> build_vocab(["ENSG00000000003.14", "ENSG00000000001"])
    {'<pad>': 0, '<cls>': 1, '<eoc>': 2, 'ENSG00000000001': 3, 'ENSG00000000003': 4}
    """
    from cellcorpus.stages.vocab import vocab_from

    return vocab_from(reference, use_col, symbol_col, list(special_tokens), add_junk_tokens)


def mix(
    configs: list[Any],
    *,
    proportions: dict[str, float] | None = None,
    caps: dict[str, int] | None = None,
    epoch_cells: int | None = None,
    names: list[str] | None = None,
    out: str | None = None,
    local_root: str = "mds-data-folder",
) -> Any:
    """The training mixture of finished corpora (config paths or loaded configs), as `cellcorpus mix` makes it:
    a `Mix` whose `.streams()` is the loaders' `streams:` block and `.table()` the cells per source per epoch;
    with `out`, both are also written there (streams.yaml, cells_per_epoch.tsv)."""
    from cellcorpus.stages.mix import mix_corpora, write_mix

    mixed = mix_corpora(configs, names=names, proportions=proportions, caps=caps, epoch_cells=epoch_cells)
    if out is not None:
        write_mix(mixed, out, local_root)
    return mixed


def dedup(cfg: Any, against: list[Any] | None = None, *, write: bool = True) -> Any:
    """Duplicate cells of a finished corpus (its recorded content fingerprints: `huggingface.fingerprints: true`)
    and its cells also in each corpus of `against` (configs or paths), as `cellcorpus dedup`: a `DedupReport`
    (`.duplicate_cells`, `.pairs` per pair of inputs with an example, `.against`); also written to the corpus'
    `report/dedup.json` unless `write=False`."""
    from cellcorpus.stages.dedup import run_dedup

    return run_dedup(cfg, against, write=write)


def decode_id(cfg: Config, cell_id: int) -> tuple[str, int]:
    """(input file path, row in that file) of a cell `id` of the dataset `cfg` describes."""
    from cellcorpus.stages.ids import decode_cell_id

    return decode_cell_id(cfg, cell_id)


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
    from cellcorpus.stages.tokenize import tokenize_in_memory

    if not split:  # every kept cell in one table, already in id order (units are): no sort, so no second copy
        sp = settings.get("split_parameters") or {}
        settings = {**settings, "split_parameters": {**(sp if isinstance(sp, dict) else dict(sp)), "test_size": 0}}
    result = tokenize_in_memory(adata, vocab, gene_col, file_index, settings)
    if not split:
        result = {"all": result["train"]}
    if as_dataset:
        try:
            import datasets
        except ImportError as exc:
            raise MissingExtraError("as_dataset=True needs HF datasets", hint="pip install 'cellcorpus[hf]'") from exc
        result = {k: datasets.Dataset(t) for k, t in result.items()}
    return result if split else result["all"]
