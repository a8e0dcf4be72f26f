"""`cellcorpus vocab`: Ensembl-keyed GeneVocab JSON (+ id -> symbol map) from a reference h5ad."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cellcorpus.config import Config, GeneIdMap, VocabConfig
from cellcorpus.core.vocab import build_vocab, is_ensembl
from cellcorpus.errors import ConfigError, InputError
from cellcorpus.formats.mds.safe_pickle import UnsafePickleError, load_mapping
from cellcorpus.io.atomic import write_json_atomic
from cellcorpus.io.h5ad import H5adReader
from cellcorpus.io.paths import join
from cellcorpus.io.tables import as_strings, read_columns, read_frame
from cellcorpus.io.vocab import load_vocab
from cellcorpus.plan import Plan, plan_for
from cellcorpus.stages.base import StageSummary, locked

__all__ = [
    "run_vocab",
    "load_vocab",
    "reference_genes",
    "vocab_from",
]  # load_vocab re-exported from io.vocab (where stages read it)

log = logging.getLogger(__name__)


@locked("vocab")
def run_vocab(cfg: Config | Plan) -> StageSummary:
    """Build and write the vocabulary; rewrites it (cheap) unless the existing file is identical."""
    vc = plan_for(cfg, "vocab").cfg.need("vocab")
    if not Path(vc.reference_adata).is_file():
        raise ConfigError(f"vocab.reference_adata: file not found: {vc.reference_adata}")
    if vc.reference_adata.endswith(".pkl"):  # a token dictionary (Geneformer's): the vocabulary as it is
        return _write_vocab(vc, token_dictionary(vc.reference_adata), {}, [])
    ids, symbols = reference_genes(vc)
    n_mapped = 0
    if vc.gene_id_map is not None:  # names that are not Ensembl ids, through the table
        ids, n_mapped = _to_ensembl(ids, vc.gene_id_map)
    try:
        built = build_vocab(ids, symbols, vc.special_tokens, vc.add_junk_tokens)
    except ValueError as exc:
        raise InputError(f"{vc.reference_adata}: {exc}") from exc
    if built.n_genes == 0:
        raise InputError(f"{vc.reference_adata}: var column '{vc.use_col}' holds no gene ids")
    notes = [f"{n_mapped:,} reference gene name(s) mapped to Ensembl ids through vocab.gene_id_map"] if n_mapped else []
    if built.duplicated_ids:
        shown = ", ".join(built.duplicated_ids[:5]) + (" ..." if len(built.duplicated_ids) > 5 else "")
        notes.append(f"{len(built.duplicated_ids)} duplicated gene id(s) in the reference (first kept): {shown}")
        log.warning(notes[-1])
    if built.n_missing_ids:
        notes.append(f"{built.n_missing_ids} reference gene(s) without an id dropped")
        log.warning(notes[-1])
    counts = {
        "genes": built.n_genes,
        "special": len(vc.special_tokens),
        "junk": built.n_junk,
        "missing_ids": built.n_missing_ids,
        "duplicated_ids": len(built.duplicated_ids),
    }
    summary = _write_vocab(vc, built.vocab, counts, notes)
    if vc.id_to_gene_output_file:
        id_path = join(vc.output_root, vc.id_to_gene_output_file)
        write_json_atomic(id_path, built.id_to_gene)
        summary.outputs["id_to_gene"] = id_path
    return summary


_TABLE_SUFFIXES = (".parquet", ".pq", ".csv", ".csv.gz", ".tsv", ".tsv.gz")


def token_dictionary(path: str) -> dict[str, int]:
    """A pickled token dictionary (Geneformer's `token_dictionary.pkl`: gene id or special token -> id), read
    without executing it; ids must be distinct non-negative integers."""
    try:
        mapping = load_mapping(Path(path).read_bytes(), path)
    except UnsafePickleError as exc:
        raise InputError(str(exc), hint="a token dictionary is a pickled dict of token -> integer id") from None
    tokens = {str(k): int(v) for k, v in mapping.items() if isinstance(v, int | np.integer)}
    if len(tokens) != len(mapping) or len(set(tokens.values())) != len(tokens) or min(tokens.values(), default=0) < 0:
        raise InputError(f"{path}: a token dictionary maps each token to a distinct non-negative integer id")
    return tokens


def _write_vocab(vc: VocabConfig, vocab: dict[str, int], counts: dict[str, int], notes: list[str]) -> StageSummary:
    """Write the vocabulary JSON (rewritten only when it differs) and summarise."""
    vocab_path = Path(vc.vocab_file)
    skipped = vocab_path.is_file() and json.loads(vocab_path.read_text()) == vocab
    if not skipped:
        write_json_atomic(vocab_path, vocab, sort_keys=False)  # index order, as GeneVocab saves
    counts = {"tokens": len(vocab), **counts}  # (the summary's order: tokens first)
    return StageSummary("vocab", skipped=skipped, counts=counts, outputs={"vocab": str(vocab_path)}, notes=notes)


def reference_genes(vc: VocabConfig) -> tuple[np.ndarray, np.ndarray]:
    """(gene ids, symbols) from the reference: an h5ad's var, or a gene table's columns (`use_col`, or the first
    of a list of columns the reference has)."""
    wanted = [vc.use_col] if isinstance(vc.use_col, str) else list(vc.use_col)
    if vc.reference_adata.lower().endswith(_TABLE_SUFFIXES):
        df = read_frame(vc.reference_adata)
        use_col = next((c for c in wanted if c in df.columns), None)
        for key, col in (("use_col", use_col), ("symbol_col", vc.symbol_col)):
            if (key == "use_col" and col is None) or (col is not None and col not in df.columns):
                raise ConfigError(
                    f"vocab.{key}: '{col or ' or '.join(wanted)}' is not a column of {vc.reference_adata}",
                    hint=f"columns: {', '.join(map(str, df.columns))}",
                )
        ids = as_strings(df[use_col].to_numpy())
        return ids, as_strings(df[vc.symbol_col].to_numpy()) if vc.symbol_col else ids
    with H5adReader(vc.reference_adata) as r:
        found = r.first_var_column(wanted)
        if found is None:
            raise ConfigError(
                f"vocab.use_col: {' or '.join(repr(c) for c in wanted)} is not a var column of {vc.reference_adata}",
                hint=f"var columns: index, {', '.join(r.var_columns())}",
            )
        return r.var_column(found), r.var_column(vc.symbol_col or "index")


def _to_ensembl(ids: np.ndarray, gene_map: GeneIdMap) -> tuple[np.ndarray, int]:
    """Ids that are not Ensembl ids replaced by the one Ensembl id the table gives each ('' where none, or more
    than one: left out of the vocabulary and counted as missing); how many were mapped."""
    try:
        names, targets = read_columns(gene_map.path, gene_map.from_column, gene_map.to_column)
    except InputError as exc:
        raise ConfigError(f"vocab.gene_id_map: {exc.message}", hint=exc.hint) from exc
    table = pd.DataFrame({"name": as_strings(names), "id": as_strings(targets)}).drop_duplicates()
    table = table[table["id"] != ""]
    unique = table.drop_duplicates("name", keep=False)  # a name of two ids is ambiguous: no id
    out = np.asarray(ids, dtype=object).copy()
    other = np.flatnonzero(~is_ensembl(out))
    found = pd.Series(unique["id"].to_numpy(), index=unique["name"].to_numpy()).reindex(out[other].astype(str))
    out[other] = found.fillna("").to_numpy(dtype=object)
    return out, int(found.notna().sum())


def vocab_from(
    reference: Any, use_col: str, symbol_col: str | None, special_tokens: list[str], add_junk_tokens: bool
) -> dict[str, int]:
    """`cellcorpus.build_vocab`: the vocabulary this stage writes, from a path (h5ad or gene table), an in-memory
    AnnData or a list of gene ids, as a dict."""
    if isinstance(reference, str | Path):
        section = VocabConfig(reference_adata=str(reference), use_col=use_col, symbol_col=symbol_col, output_root=".")
        ids, symbols = reference_genes(section)
    elif hasattr(reference, "var"):  # an AnnData
        var = reference.var
        if use_col != "index" and use_col not in var.columns:
            raise ConfigError(f"build_vocab: '{use_col}' is not a var column", hint=f"var: {', '.join(var.columns)}")
        ids = np.asarray(var.index if use_col == "index" else var[use_col], dtype=object)
        symbols = np.asarray(var.index if symbol_col is None else var[symbol_col], dtype=object)
    else:
        ids = symbols = np.asarray(list(reference), dtype=object)
    try:
        return build_vocab(ids, symbols, special_tokens, add_junk_tokens).vocab
    except ValueError as exc:
        raise ConfigError(f"build_vocab: {exc}") from exc
