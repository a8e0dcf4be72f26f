"""The tokenize inputs of a config: discover them, and inspect each one before any unit runs.

Inspection opens every input once (HDF5 keys and the gene-id column only; the parquet schema) and
finds what would otherwise fail hours later inside a worker: a `gene_col` or obs column missing from a
file, a file with no genes, a file whose gene ids barely match the vocabulary (keyed by symbols, or
another species), empty gene ids.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cellcorpus.config import HuggingfaceConfig
from cellcorpus.core.genemap import GeneMapping, IdMap, harmonize
from cellcorpus.core.vocab import VocabLookup, is_ensembl
from cellcorpus.errors import ConfigError, InputError
from cellcorpus.io.tables import as_strings, read_columns
from cellcorpus.sources.base import InputFile, RawBlock

__all__ = [
    "InputFormat",
    "INPUT_FORMATS",
    "input_format",
    "peek_first_input",
    "obs_index_column",
    "required_obs_columns",
    "InputsReport",
    "discover_and_inspect",
    "gene_mapping",
]


Visit = Callable[[InputFile, Any], None]  # (input, its open reader or None): runs during discovery


def _discover_h5ad(hf: HuggingfaceConfig, decompressed: Path, visit: Visit | None = None) -> list[InputFile]:
    from cellcorpus.sources.local import discover_h5ad

    return discover_h5ad(hf.adata_dir, hf.ignore_dir, str(decompressed), hf.counts_layer, visit)


def _discover_parquet(hf: HuggingfaceConfig, decompressed: Path, visit: Visit | None = None) -> list[InputFile]:
    from cellcorpus.sources.tahoe import discover_parquet

    del decompressed  # parquet inputs are read in place
    return discover_parquet(hf.adata_dir, hf.ignore_dir, visit)


def _peek_h5ad(hf: HuggingfaceConfig) -> InputFile | None:
    from cellcorpus.io.paths import exists, join

    if not exists(hf.adata_dir):
        return None
    from cellcorpus.sources.local import find_h5ad_files

    rels = [r for r in find_h5ad_files(hf.adata_dir, hf.ignore_dir) if not r.endswith(".gz")]
    return InputFile(join(hf.adata_dir, rels[0]), rels[0], 0, 0, 0, "") if rels else None


def _index_name_h5ad(hf: HuggingfaceConfig, first: InputFile | None) -> str | None:
    if first is None:
        return None
    from cellcorpus.io.h5ad import H5adReader

    with H5adReader(first.path) as r:
        return r.obs_index_name


def _read_h5ad(path: str, row_start: int, row_stop: int, hf: HuggingfaceConfig) -> RawBlock:
    from cellcorpus.sources.local import read_h5ad_block

    return read_h5ad_block(path, row_start, row_stop, hf.gene_col, _obs_to_read(hf), hf.counts_layer)


def _read_parquet(path: str, row_start: int, row_stop: int, hf: HuggingfaceConfig) -> RawBlock:
    from cellcorpus.sources.tahoe import read_parquet_block

    return read_parquet_block(path, row_start, row_stop, hf.parquet_gene_table, _obs_to_read(hf))


def _obs_to_read(hf: HuggingfaceConfig) -> list[str]:
    """The obs columns a unit reads: those the config asks for, then the encoding's own where present."""
    return list(dict.fromkeys([*required_obs_columns(hf), *hf.optional_obs_columns()]))


@dataclass(frozen=True)
class InputFormat:
    """One kind of tokenize input: how to list its files, name its obs index, read a unit, check a file.

    `huggingface.input_format` picks the entry of INPUT_FORMATS; adding a format is one entry (its reader
    module returns a RawBlock: CSR rows + the genes' ids + the obs columns asked for).
    """

    name: str
    discover: Callable[[HuggingfaceConfig, Path, Visit | None], list[InputFile]]  # Path: where .gz decompress
    peek_first: Callable[[HuggingfaceConfig], InputFile | None]  # listing only, before a full discovery
    index_name: Callable[[HuggingfaceConfig, InputFile | None], str | None]  # None: unknown until inputs exist
    read_block: Callable[[str, int, int, HuggingfaceConfig], RawBlock]
    # the last argument: the reader discovery holds open on the file (None for formats without one)
    inspect: Callable[[HuggingfaceConfig, InputFile, VocabLookup | None, InputsReport, Any], None]


def input_format(hf: HuggingfaceConfig) -> InputFormat:
    """The registered input format the config names."""
    return INPUT_FORMATS[hf.input_format]


def peek_first_input(hf: HuggingfaceConfig) -> InputFile | None:
    """The first input by listing only (None before the inputs exist, e.g. ahead of a download)."""
    return input_format(hf).peek_first(hf)


def obs_index_column(hf: HuggingfaceConfig, first: InputFile | None) -> str | None:
    """The output column the obs index is written under (named after the first file's obs index)."""
    if not hf.add_obs_index:
        return None
    return input_format(hf).index_name(hf, first)


def required_obs_columns(hf: HuggingfaceConfig) -> dict[str, str]:
    """Obs column -> the config key that asks for it (for messages), `index` excluded."""
    need: dict[str, str] = {}
    for i, name in enumerate(hf.obs_metadata_columns):
        need.setdefault(name, f"huggingface.obs_metadata_columns.{i}")
    if hf.obs_filter:
        need.setdefault(hf.obs_filter.key, "huggingface.obs_filter.key")
    for i, join in enumerate(hf.additional_metadata_info):
        need.setdefault(join.merge_keys.adata_key, f"huggingface.additional_metadata_info.{i}.merge_keys.adata_key")
    if hf.split_parameters.key != "id":
        for i, name in enumerate(hf.split_parameters.key):
            need.setdefault(name, f"huggingface.split_parameters.key.{i}")
    if hf.split_parameters.by is not None:
        need.setdefault(hf.split_parameters.by, "huggingface.split_parameters.by")
    need.pop("index", None)
    return need


_ID_MAPS: dict[tuple, tuple[VocabLookup, IdMap, IdMap | None]] = {}
# names in one alias cell: "A|B" (HGNC's complete set) or "A, B" (HGNC's custom downloads, BioMart); gene symbols
# hold neither character
ALIAS_SEPARATORS = r"\s*[|,]\s*"


def gene_mapping(hf: HuggingfaceConfig, var_ids: np.ndarray, lookup: VocabLookup) -> GeneMapping:
    """A file's genes mapped into the vocabulary: directly, then through `gene_id_map` when configured.

    The map table is read once per process and vocabulary (every unit of every file shares it).
    """
    id_map = alias = None
    if hf.gene_id_map is not None:
        m = hf.gene_id_map
        if not Path(m.path).is_file():
            raise ConfigError(f"huggingface.gene_id_map.path: file not found: {m.path}")
        stamp = Path(m.path).stat().st_mtime_ns
        key = (m.path, stamp, m.from_column, m.to_column, tuple(m.alias_columns), id(lookup))
        if key not in _ID_MAPS:
            if len(_ID_MAPS) >= 4:
                _ID_MAPS.pop(next(iter(_ID_MAPS)))
            try:
                sources, targets = read_columns(m.path, m.from_column, m.to_column)
                aliases = [read_columns(m.path, c, m.to_column) for c in m.alias_columns]
            except InputError as exc:
                raise ConfigError(exc.message, hint=exc.hint) from exc
            alias_map = None
            if aliases:
                names = np.concatenate([a for a, _ in aliases])
                alias_map = IdMap(names, np.concatenate([t for _, t in aliases]), lookup, split=ALIAS_SEPARATORS)
            # the lookup is kept alive with its id
            _ID_MAPS[key] = (lookup, IdMap(sources, targets, lookup), alias_map)
        _, id_map, alias = _ID_MAPS[key]
    return harmonize(var_ids, lookup, id_map, alias)


@dataclass
class InputsReport:
    """Per-file gene coverage and the warnings worth one line each."""

    coverage: dict[str, float] = field(default_factory=dict)  # relative path -> share of genes in vocab
    mappings: dict[str, GeneMapping] = field(default_factory=dict)  # relative path -> how its genes map
    groups: dict[str, int] = field(default_factory=dict)  # `split_parameters.by` value -> input cells
    gene_cols: dict[str, str] = field(default_factory=dict)  # relative path -> the var column of its gene ids
    file_groups: dict[str, dict[str, int]] = field(default_factory=dict)  # relative path -> its groups' cells
    notes: list[str] = field(default_factory=list)

    def count_groups(self, rel_path: str, values: np.ndarray) -> None:
        """Add one file's group column (the group split's sizes: input cells, before any filter)."""
        names, counts = np.unique(as_strings(values).astype(str), return_counts=True)
        self.file_groups[rel_path] = dict(zip(names.tolist(), counts.tolist(), strict=True))
        for name, n in self.file_groups[rel_path].items():
            self.groups[name] = self.groups.get(name, 0) + n

    def groups_of(self, rel_paths: list[str]) -> dict[str, int]:
        """Group -> input cells over these files only."""
        out: dict[str, int] = {}
        for path in rel_paths:
            for name, n in self.file_groups.get(path, {}).items():
                out[name] = out.get(name, 0) + n
        return out


def _shown(values: np.ndarray, k: int = 4) -> str:
    return ", ".join(repr(str(v)) for v in values[:k])


def _coverage_error(
    hf: HuggingfaceConfig, f: InputFile, ids: np.ndarray, share: float, lookup: VocabLookup, alternatives: dict,
    column: str,
) -> ConfigError:  # fmt: skip
    vocab_ids = [t for t in list(lookup.vocab)[:200] if not t.startswith("<")][:3]
    better = {c: s for c, s in alternatives.items() if s >= max(hf.min_gene_coverage, 0.5)}
    if better:
        best = max(better, key=better.__getitem__)
        hint = f"set huggingface.gene_col: {best} ({better[best]:.0%} of that column is in the vocabulary)"
    elif ids.size and np.mean(~is_ensembl(ids[:1000])) > 0.5:
        hint = (
            "these look like gene symbols while the vocabulary holds Ensembl ids: point gene_col at a column of "
            "Ensembl ids, or set huggingface.gene_id_map to a symbol -> Ensembl id table (`cellcorpus genes` "
            "shows the coverage first)"
        )
    else:
        hint = "point huggingface.gene_col at the var column holding the vocabulary's ids, or exclude the file"
    return ConfigError(
        f"huggingface.gene_col: only {share:.2%} of the genes of {f.path} ('{column}': {_shown(ids)}) are in "
        f"the vocabulary ({', '.join(vocab_ids)}, ...); at least {hf.min_gene_coverage:.0%} is required",
        hint=hint,
    )


def _check_coverage(
    hf: HuggingfaceConfig,
    f: InputFile,
    ids: np.ndarray,
    lookup: VocabLookup,
    rep: InputsReport,
    alternatives: Callable[[], dict[str, float]],
    column: str = "",
) -> None:
    """Record how a file's gene ids (from var `column`) map into the vocabulary; below `min_gene_coverage` is a
    ConfigError whose hint names a better column when `alternatives()` (computed only then) finds one."""
    column = column or "genes"
    mapping = gene_mapping(hf, ids, lookup)
    rep.mappings[f.rel_path] = mapping
    share = float(np.mean(mapping.gene_map >= 0)) if len(mapping.gene_map) else 0.0
    rep.coverage[f.rel_path] = share
    if share < hf.min_gene_coverage:
        raise _coverage_error(hf, f, ids, share, lookup, alternatives(), column)
    if share == 0.0:  # allowed (min_gene_coverage 0), but never silent: every cell of the file will be dropped
        rep.notes.append(
            f"{f.rel_path}: no gene id ('{column}': {_shown(ids)}) is in the vocabulary, so all its cells "
            "are dropped (huggingface.min_gene_coverage is 0, which allows it)"
        )


def _inspect_h5ad(hf: HuggingfaceConfig, f: InputFile, lookup: VocabLookup | None, rep: InputsReport, r: Any) -> None:
    # `r`: the file's H5adReader, open while discovery visits the file
    need = required_obs_columns(hf)
    if r.n_vars == 0:
        raise InputError(f"{f.path}: file has no genes (var is empty)")
    var_cols = r.var_columns()
    gene_col = r.first_var_column(hf.gene_cols)
    if gene_col is None:
        named = " or ".join(f"'{c}'" for c in hf.gene_cols)
        raise ConfigError(
            f"huggingface.gene_col: {named} is not a var column of {f.path}",
            hint=f"var columns: index, {', '.join(var_cols)}",
        )
    rep.gene_cols[f.rel_path] = gene_col
    obs_cols = set(r.obs_columns()) | {r.obs_index_name}
    for name, key in need.items():
        if name not in obs_cols and name not in hf.joined_columns():
            raise ConfigError(
                f"{key}: '{name}' is not an obs column of {f.path}",
                hint=f"obs columns: {', '.join(sorted(map(str, obs_cols)))}",
            )
    if hf.split_parameters.by is not None:
        rep.count_groups(f.rel_path, r.obs_column(hf.split_parameters.by, 0, r.n_obs))
    ids = r.var_column(gene_col)
    n_empty = int(np.count_nonzero(np.char.str_len(ids.astype(str)) == 0)) if ids.size else 0
    if n_empty:
        rep.notes.append(f"{f.rel_path}: {n_empty} gene(s) with an empty id in '{gene_col}' (not tokenized)")
    if lookup is None:
        return

    def alternatives() -> dict[str, float]:  # what each other var column would cover (for the hint)
        return {
            col: float(np.mean(gene_mapping(hf, r.var_column(col), lookup).gene_map >= 0))
            for col in ["index", *var_cols]
            if col != gene_col
        }

    _check_coverage(hf, f, ids, lookup, rep, alternatives, gene_col)


def _inspect_parquet(
    hf: HuggingfaceConfig, f: InputFile, lookup: VocabLookup | None, rep: InputsReport, reader: Any
) -> None:
    import pyarrow.parquet as pq

    from cellcorpus.sources.tahoe import INDEX_COLUMN, load_gene_table

    names = set(pq.ParquetFile(f.path).schema_arrow.names)
    for col in ("genes", "expressions"):
        if col not in names:
            raise InputError(f"{f.path}: parquet has no '{col}' column", hint=f"columns: {', '.join(sorted(names))}")
    for name, key in required_obs_columns(hf).items():
        if name not in names | {INDEX_COLUMN} | hf.joined_columns():
            raise ConfigError(
                f"{key}: '{name}' is not a column of {f.path}", hint=f"columns: {', '.join(sorted(names))}"
            )
    by = hf.split_parameters.by
    if by is not None:
        rep.count_groups(
            f.rel_path, pq.read_table(f.path, columns=[INDEX_COLUMN if by == "index" else by]).column(0).to_numpy()
        )
    if lookup is not None and hf.parquet_gene_table:
        ids = load_gene_table(hf.parquet_gene_table)
        _check_coverage(hf, f, ids[ids != ""], lookup, rep, dict)


def discover_and_inspect(
    hf: HuggingfaceConfig, vocab: dict[str, int] | None, decompressed: Path, *, strict: bool = True
) -> tuple[list[InputFile], InputsReport]:
    """Every input file of the config, sorted (the order defines `file_index`), each checked while it is open:
    columns and, with a vocabulary, gene coverage (raising on the first problem). One open per file: over
    10^4 remote files one round trip each, not two. `.h5ad.gz` inputs are decompressed once into
    `decompressed` (the layout's scratch folder). `strict=False` (the `genes` dry run) reports coverage
    below `min_gene_coverage` instead of raising."""
    if not strict:
        hf = hf.model_copy(update={"min_gene_coverage": 0.0})
    rep = InputsReport()
    lookup = VocabLookup(vocab) if vocab is not None else None
    fmt = input_format(hf)
    inputs = fmt.discover(hf, decompressed, lambda f, reader: fmt.inspect(hf, f, lookup, rep, reader))
    return inputs, rep


INPUT_FORMATS: dict[str, InputFormat] = {
    "h5ad": InputFormat("h5ad", _discover_h5ad, _peek_h5ad, _index_name_h5ad, _read_h5ad, _inspect_h5ad),
    "tahoe_parquet": InputFormat(
        "tahoe_parquet", _discover_parquet, lambda hf: None, lambda hf, f: "index", _read_parquet, _inspect_parquet
    ),
}
