"""Seed-compatible YAML configs: OmegaConf load + `${}` resolve, then strict pydantic validation.

One pydantic model per YAML section, `extra="forbid"` so a misspelled key is an error naming it,
frozen so stages cannot mutate what they were given. Seed quirks are normalised here and nowhere else.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from cellcorpus.errors import ConfigError
from cellcorpus.io.paths import join as _join

__all__ = [
    "CELL_HASH",
    "Config",
    "VocabConfig",
    "CellxgeneConfig",
    "HuggingfaceConfig",
    "MdsConfig",
    "RemoteSourceConfig",
    "ExecutorConfig",
    "IoConfig",
    "DrugsConfig",
    "GeneIdMap",
    "SplitParameters",
    "MetadataJoin",
    "load_config",
    "config_hash",
    "HF_LOCATION_KEYS",
    "MDS_LOCATION_KEYS",
]


def _plain_name(value: str) -> str:
    """A config value that becomes one path component under a root (a split, a file or folder name): no
    separators, no `..`, so nothing derived from it can land outside its root or delete there."""
    if value in ("", ".", "..") or "/" in value or "\\" in value or "\0" in value:
        raise ValueError("must be a plain file or folder name (no '/', no '..')")
    return value


PlainName = Annotated[str, AfterValidator(_plain_name)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GeneIdMap(_Section):
    """`gene_id_map:` — a table mapping the inputs' gene ids (symbols, old or versioned Ensembl ids) to the
    vocabulary's. Column names, or 0-based positions for a headerless table (GENCODE exports).
    """

    # the mapping table (CSV, TSV or parquet)
    path: str
    # column (or position) holding the inputs' gene ids
    from_column: str | int = "gene_name"
    # column (or position) holding the vocabulary's ids
    to_column: str | int = "gene_id"
    # columns (or positions) of earlier or other names of a gene (HGNC `prev_symbol`, `alias_symbol`; several
    # names in one cell separated by `|` or `,`), tried for an input id no from_column row names
    alias_columns: list[str | int] = Field(default_factory=list)

    @model_validator(mode="after")
    def _same_kind(self) -> GeneIdMap:
        kinds = {isinstance(c, int) for c in (self.from_column, self.to_column, *self.alias_columns)}
        if len(kinds) > 1:
            raise ValueError("from_column, to_column and alias_columns must all be names or all be positions")
        return self

    @property
    def has_header(self) -> bool:
        """Whether columns are named (True) or 0-based positions in a headerless table."""
        return not isinstance(self.from_column, int)


class VocabConfig(_Section):
    """`vocab:` — build the Ensembl-keyed GeneVocab JSON from a reference h5ad."""

    reference_adata: str  # an .h5ad, or a gene table (.parquet/.csv/.tsv, e.g. the Tahoe release's gene_metadata)
    # the var (or table) column holding the Ensembl ids (`index` = the var names); a list: the first the reference
    # has (e.g. [gene_id, index] for plates whose var may hold only symbols, with `gene_id_map`)
    use_col: str | list[str] = "index"
    # a symbol -> Ensembl id table for a reference whose ids are not all Ensembl ids: each id that is not one is
    # replaced by the id the table gives it (one id: an ambiguous or unknown name is left out, and counted)
    gene_id_map: GeneIdMap | None = None
    symbol_col: str | None = None  # gene symbols for id_to_gene: the var index of an h5ad when unset
    # pad the vocabulary with `<junkN>` tokens to a multiple of 64 (as the seed's vocabulary)
    add_junk_tokens: bool = False
    # tokens placed first, in this order (ids 0, 1, ...)
    special_tokens: list[str] = Field(default_factory=lambda: ["<pad>", "<cls>", "<eoc>"])
    # folder the vocabulary files are written to
    output_root: str
    # the vocabulary JSON's name (token -> id)
    output_file: PlainName = "vocab.json"
    # optional JSON of Ensembl id -> gene symbol
    id_to_gene_output_file: PlainName | None = None

    @property
    def vocab_file(self) -> str:
        """Path of the vocabulary JSON this section writes."""
        return _join(self.output_root, self.output_file)


class CellxgeneConfig(_Section):
    """`cellxgene:` — Census download settings (seed keys + `census_uri` for a local/mirrored SOMA)."""

    # Census release (`census_version`)
    version: str = "2025-01-21"
    # a local or mirrored SOMA experiment instead of the public release
    census_uri: str | None = None
    # Census organism
    organism: str = "Homo sapiens"
    # var column of gene ids kept in the chunks
    use_col: str = "feature_id"
    # keep genes measured in at least this many cells (var n_measured_obs)
    min_gene_measured_obs: int = Field(0, ge=0)
    # keep genes non-zero in at least this many cells (var nnz)
    min_gene_nnz: int = Field(0, ge=0)
    # drop a chunk's genes whose total count in it is below this
    min_count_per_gene: int = Field(0, ge=0)
    # cells per downloaded chunk_<i>.h5ad
    chunk_size: int = Field(100_000, gt=0)
    # folder the chunks are written to
    output_root: str
    # vocabulary JSON restricting the genes fetched (null: all that pass the filters)
    vocab: str | None = None
    # chunks fetched in parallel
    num_proc: int = Field(1, ge=1)


class RemoteSourceConfig(_Section):
    """`scbasecamp:` / `tahoe:` — where to fetch data files (any fsspec URL: gs://, s3://, hf://, http(s)://,
    file://) and where to cache them (`output_root/<data_dir>/`, metadata tables in `output_root/metadata/`).
    """

    # folder URL of the data files (gs://, s3://, hf://, http(s)://, file://)
    url: str
    # local folder the files are cached in
    output_root: str
    # which files under `url` to fetch
    glob: str = "**/*.h5ad"
    # sub-folder of output_root for the data files
    data_dir: PlainName = "h5ad"
    # tables fetched into output_root/metadata/
    metadata_urls: list[str] = Field(default_factory=list)
    # Google Cloud project billed for a Requester Pays bucket (gs://arc-institute-virtual-cell-atlas is one).
    requester_pays_project: str | None = None
    # files fetched in parallel
    num_proc: int = Field(4, ge=1)
    # attempts per file before the download fails
    retries: int = Field(3, ge=0)


class SplitParameters(_Section):
    """`split_parameters:` — seeded hash split of cell ids; `shuffle` = seeded global order.

    `key`: what identifies a cell for the split. `id` (the default, the seed's behaviour) hashes the cell id,
    i.e. (input file, row): another layout of the same data splits differently. A list of obs columns (`index`
    = the obs index, e.g. `[index, sample]`) hashes their values, so a cell lands in the same split whichever
    file or row it is read from; the values must identify one cell (a repeat stops tokenize, naming it).

    `by`: a group column (`dataset_id`, `donor_id`, `srx_accession`, `plate`): whole groups go to valid, in an
    order fixed by the seed and the group's value, until it holds `test_size` of the input cells."""

    # share of cells in valid (0 = no valid split)
    test_size: float = 0.01
    # seed of the split and of the shuffle's order
    seed: int = 42
    # write each split in a seeded global random order (an external bucket shuffle)
    shuffle: bool = False
    # what the split hashes: `id` (input file, row) or obs columns identifying a cell, e.g. [index, sample]
    key: Literal["id"] | list[str] = "id"
    # hold out whole groups of this obs column (donor, dataset, SRX, plate) instead of single cells
    by: str | None = None

    @model_validator(mode="after")
    def _one_rule(self) -> SplitParameters:
        if self.by is not None and self.key != "id":
            raise ValueError("`by` (whole groups) and `key` (each cell) are two split rules: set one of them")
        return self

    @field_validator("key", mode="before")
    @classmethod
    def _key(cls, v: Any) -> Any:
        if isinstance(v, str) and v != "id":
            return [v]  # one column
        if isinstance(v, list | tuple):
            if not v or "id" in v:
                raise ValueError("a list of obs column names (or `id` alone)")
            if len(set(v)) != len(v):
                raise ValueError(f"a column is listed twice: {list(v)}")
            return list(v)
        return v

    @field_validator("test_size")
    @classmethod
    def _fraction(cls, v: float) -> float:
        if not 0.0 <= v < 1.0:
            raise ValueError(f"must be in [0, 1), got {v}")
        return v


class ObsFilter(_Section):
    """`obs_filter:` — keep only the cells whose column equals a value (the seed's `pass_filter == full`)."""

    # obs (or joined) column compared
    key: str
    # cells whose value equals this are kept
    value: str | int | float | bool


class FilterCells(_Section):
    """Scanpy `filter_cells` semantics on the file's full gene set (before vocabulary mapping)."""

    # drop cells with fewer non-zero genes
    min_genes: int | None = Field(None, ge=0)
    # drop cells with a smaller total count
    min_counts: float | None = Field(None, ge=0)


class MergeKeys(_Section):
    """`merge_keys:` — the columns a join matches."""

    # the table's key column
    metadata_key: str
    # the obs (or earlier joined) column matched against it
    adata_key: str


class MetadataJoin(_Section):
    """One `additional_metadata_info` entry: left join of a CSV/parquet table onto obs."""

    # the table (CSV, TSV or parquet; a parquet over 2M rows is indexed on disk once per run)
    path: str
    # which columns are matched
    merge_keys: MergeKeys
    # table columns added to each cell
    columns: list[str]


class GeneformerSettings(_Section):
    """`huggingface.geneformer:` — Geneformer's rank-value encoding (`encoding: geneformer`)."""

    # tokens per cell, special tokens included: 2048 for the 30M model series, 4096 for the 95M/104M series
    model_input_size: int = Field(4096, gt=2)
    # V2 (95M/104M series): `<cls>` first and `<eos>` last in every cell; V1 (30M series): false
    special_tokens: bool = True
    # each gene's non-zero median of normalised expression: Geneformer's gene_median_dictionary .pkl, or the
    # `stats.parquet` that `cellcorpus stats` writes (columns gene_id, median)
    gene_median: str
    # counts are scaled to this total per cell before dividing by the gene's median
    target_sum: int = Field(10_000, gt=0)
    # obs column holding each cell's total counts, read when present (else the sum of the cell's counts)
    n_counts_column: str = "n_counts"
    # obs column marking the cells to keep (value 1), read when present (else every cell is kept)
    filter_pass_column: str = "filter_pass"


class StatsConfig(_Section):
    """`stats:` — per-gene corpus statistics over the huggingface section's inputs (`cellcorpus stats`): the
    non-zero medians Geneformer normalises by, non-zero cells, totals, cells and counts per input."""

    # folder of stats.parquet, gene_median.pkl (Geneformer's dictionary format), stats.json and the manifest
    output_root: str
    # counts are scaled to this total per cell before the medians are taken (Geneformer: 10,000)
    target_sum: int = Field(10_000, gt=0)
    # the medians' relative error bound: values are counted in logarithmic buckets this fine (a DDSketch)
    relative_accuracy: float = Field(0.005, gt=0.0, lt=0.1)
    # worker processes
    num_proc: int = Field(1, ge=1)
    # cells per work unit (read `huggingface.unit_cells` rows at a time): a unit's sketch holds each (gene,
    # bucket) once however many cells repeat it, so larger units write and merge less; results do not depend on it
    unit_cells: int = Field(262_144, ge=1)


class ScgptBinning(_Section):
    """`huggingface.scgpt.binning:` — scGPT's value binning stored in the corpus as a `bins` column."""

    # bins per cell (scGPT's DataCollator uses 51): values go to their cell's n_bins - 1 quantile edges
    n_bins: int = Field(51, ge=3, le=1 << 15)


class ScgptSettings(_Section):
    """`huggingface.scgpt:` — scGPT's cell encoding (`encoding: scgpt`)."""

    # the value beside <cls>: scGPT's pad value (-2) for pretraining, as its scBank build prepends it; 0 as its
    # fine-tuning `tokenize_batch` does
    cls_value: float = -2.0
    # also write each split as scGPT's scBank folder (`<merged_dataset_root>/<split>.scb/`: its genes and raw
    # counts without <cls>, which scGPT's pretraining prepends), beside the HF datasets
    scbank: bool = False
    # also store each cell's values binned as scGPT's `binning` does (a `bins` column beside `expressions`; ties
    # on a bin edge take the upper bin, where scGPT picks at random): train with DataCollator(do_binning=False)
    binning: ScgptBinning | None = None


class HuggingfaceConfig(_Section):
    """`huggingface:` — tokenization into HF Arrow datasets (seed keys + a few defaulted new ones)."""

    # the corpus' name (manifest and report)
    dataset_name: str | None = None
    # folder (or URL) of the inputs: every .h5ad / .h5ad.gz (or parquet) under it
    adata_dir: str
    # sub-folders of adata_dir to skip (the seed's string `None` = none)
    ignore_dir: list[str] = Field(default_factory=list)
    # var column holding the inputs' gene ids (`index` = the var names); a list: per file, the first it has (e.g.
    # [gene_id, index]: Ensembl ids where a file has them, else its var names, mapped through `gene_id_map`)
    gene_col: str | list[str] = "index"
    # token placed first in every cell
    cls_token: str = "<cls>"
    # place cls_token (with pad_value) first in every cell
    add_cls_token: bool = True
    # the expression value written beside the CLS token
    pad_value: float = -2
    # minimum number of data files per split when shuffling
    num_chunks: int = Field(1, ge=1)
    # worker processes
    num_proc: int = Field(1, ge=1)
    # local scratch folder (unit parts, completion records), removed when tokenize finishes
    output_root: str
    # where `train.dataset` / `valid.dataset` and the manifest go (a folder or URL)
    merged_dataset_root: str
    # folder of the vocabulary JSON
    vocab_output_root: str
    # the vocabulary JSON's name in vocab_output_root
    vocab_path: str
    # the train/valid split
    split_parameters: SplitParameters = Field(default_factory=SplitParameters)
    # keep only cells whose obs (or joined) column equals a value
    obs_filter: ObsFilter | None = None
    # minimum genes / counts per cell
    filter_cells: FilterCells | None = None
    # obs columns written beside the tokens (as strings)
    obs_metadata_columns: list[str] = Field(default_factory=list)
    # also write the obs index (as the column `index`, or its own name)
    add_obs_index: bool = True
    # left joins of tables onto obs (their columns written too)
    additional_metadata_info: list[MetadataJoin] = Field(default_factory=list)
    # New keys (defaults keep seed meaning) from here on.
    #
    # how inputs are read: `h5ad`, or `tahoe_parquet` (the Tahoe-100M release's parquet files)
    input_format: Literal["h5ad", "tahoe_parquet"] = "h5ad"
    # for tahoe_parquet: the table mapping release token ids to Ensembl ids
    parquet_gene_table: str | None = None
    # cells per work unit (bounds a worker's memory)
    unit_cells: int = Field(16_384, gt=0)
    # cells per shuffle bucket, i.e. per output data file when shuffling
    shuffle_bucket_cells: int = Field(32_768, gt=0)
    # A cell with no gene in the vocabulary becomes `[<cls>]` alone, which the Tahoe-x1 collator rejects
    # (torch.squeeze makes it 0-d): such cells are dropped and counted (`filtered_min_vocab_genes`).
    min_vocab_genes: int = Field(1, ge=0)
    # A file whose gene ids barely match the vocabulary is keyed by something else (symbols, another
    # species): stop before tokenizing when fewer than this share of its genes are in the vocabulary.
    min_gene_coverage: float = Field(0.01, ge=0.0, le=1.0)
    # map the inputs' gene ids to the vocabulary's through a table
    gene_id_map: GeneIdMap | None = None
    # Which counts matrix: null = X; or a layer name (scBaseCamp 2026-01-12 files: X = STARsolo `Unique`,
    # layers `UniqueAndMult-EM` and `UniqueAndMult-Uniform`).
    counts_layer: str | None = None
    # Output names for metadata columns (source name -> name written), e.g. the release's `cell_line_id` ->
    # `Cell_ID_Cellosaur`, the name the seed's Tahoe dataset and training config use.
    rename_columns: dict[str, str] = Field(default_factory=dict)
    # The cell encoding written: `tahoe_x1` (genes + raw counts after <cls>, the Tahoe-x1 recipe), `geneformer`
    # (Geneformer's rank-value `input_ids` + `length`, with the `geneformer` section's settings) or `scgpt`
    # (genes in ascending order + raw counts after <cls>, as scGPT's tokenize_batch; `scgpt` section).
    encoding: Literal["tahoe_x1", "geneformer", "scgpt"] = "tahoe_x1"
    # settings of `encoding: geneformer`
    geneformer: GeneformerSettings | None = None
    # settings of `encoding: scgpt` (defaults when left out)
    scgpt: ScgptSettings | None = None
    # record a 128-bit content fingerprint of every kept cell (its (Ensembl id, count) pairs) beside the
    # datasets, for `cellcorpus dedup` (duplicates within this corpus and against other finished corpora)
    fingerprints: bool = False
    # cell id lists to leave out of the corpus (`cellcorpus dedup`'s report/duplicate_ids.npz, or an also_in_*.npz
    # list of cells another corpus holds); each is checked against these inputs before use, and its cells are
    # counted as `filtered_listed_ids`
    drop_ids: list[str] = Field(default_factory=list)
    # write each cell's content fingerprint as a `cell_hash` column (32 hex characters, the last metadata column):
    # equal for the same cell in any file of any corpus (see `fingerprints`)
    cell_hash: bool = False

    @field_validator("ignore_dir", mode="before")
    @classmethod
    def _seed_ignore_dir(cls, v: Any) -> Any:
        # Seed quirk: `ignore_dir: None` is the *string* "None" (YAML has no None literal); null too.
        if v is None or (isinstance(v, str) and v.strip() in {"None", ""}):
            return []
        if isinstance(v, str):
            return [v]
        return v

    @model_validator(mode="after")
    def _cell_hash_is_free(self) -> HuggingfaceConfig:
        if self.cell_hash and CELL_HASH in self.model_copy(update={"cell_hash": False}).metadata_columns("index"):
            raise ValueError(f"cell_hash: a metadata column is already named '{CELL_HASH}' (rename it)")
        return self

    @model_validator(mode="after")
    def _parquet_needs_gene_table(self) -> HuggingfaceConfig:
        if self.input_format == "tahoe_parquet" and not self.parquet_gene_table:
            raise ValueError("input_format 'tahoe_parquet' needs parquet_gene_table (token_id -> ensembl_id table)")
        if self.encoding == "geneformer" and self.geneformer is None:
            raise ValueError("encoding 'geneformer' needs a geneformer section (at least gene_median)")
        by = self.split_parameters.by
        if by is not None and by in self.joined_columns():
            raise ValueError(f"split_parameters.by: '{by}' is a joined column; group by a column of the inputs' obs")
        return self

    @property
    def vocab_file(self) -> str:
        """Path of the vocabulary JSON tokenize reads."""
        return _join(self.vocab_output_root, self.vocab_path)

    def metadata_columns(self, index_name: str | None) -> list[str]:
        """Output metadata columns in seed order: obs columns, obs index, then joined columns."""
        cols = list(self.obs_metadata_columns)
        if self.add_obs_index and index_name is not None and index_name not in cols:
            cols.append(index_name)
        for join in self.additional_metadata_info:
            cols.extend(c for c in join.columns if c not in cols)
        named = [self.rename_columns.get(c, c) for c in cols]
        return [*named, CELL_HASH] if self.cell_hash else named

    @field_validator("gene_col")
    @classmethod
    def _some_gene_col(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and not value:
            raise ValueError("name at least one var column")
        return value

    @property
    def gene_cols(self) -> list[str]:
        """`gene_col` as a list of candidates, in order."""
        return [self.gene_col] if isinstance(self.gene_col, str) else list(self.gene_col)

    def optional_obs_columns(self) -> list[str]:
        """Obs columns the encoding reads when a file has them (Geneformer's n_counts and filter_pass)."""
        if self.encoding == "geneformer" and self.geneformer is not None:
            return [self.geneformer.n_counts_column, self.geneformer.filter_pass_column]
        return []

    def joined_columns(self) -> set[str]:
        """Names the join tables bring (usable by obs_filter and later joins' keys)."""
        return {c for join in self.additional_metadata_info for c in join.columns}


CELL_HASH = "cell_hash"  # the column `huggingface.cell_hash` adds
MDS_DEFAULT_SIZE_LIMIT = 1 << 26  # mosaicml-streaming's own default shard size limit (64 MiB)


class MdsConfig(_Section):
    """`mds:` — MosaicML MDS export of each split."""

    # where the MDS splits go (a folder or URL; a URL is staged locally and uploaded)
    out_root: str
    # the HF datasets exported (huggingface.merged_dataset_root)
    root_dir: str
    # splits exported
    splits: list[PlainName] = Field(default_factory=lambda: ["train", "valid"])
    # column -> MDS encoding (`pkl` for Tahoe-x1's genes/expressions, `ndarray:int32`, `int64`, `str`, ...)
    columns: dict[str, str]
    # `zstd` or `zstd:LEVEL`; null = none
    compression: str | None = "zstd"
    # hashes recorded per shard in index.json (e.g. sha1, xxh64)
    hashes: list[str] = Field(default_factory=list)
    # drop cells with fewer tokens (counted)
    min_length: int | None = Field(None, ge=0)
    # worker processes of the mds stage
    num_proc: int = Field(1, ge=1)
    # shard size limit in bytes (MDS's default)
    size_limit: int = Field(MDS_DEFAULT_SIZE_LIMIT, gt=0)
    staging_dir: str | None = None  # local folder for shards before upload when out_root is a URL

    @field_validator("splits")
    @classmethod
    def _non_empty(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("must list at least one split")
        if len(set(v)) != len(v):
            raise ValueError("lists a split twice")
        return v


class DrugsConfig(_Section):
    """`drugs:` — Morgan fingerprints of the perturbing drugs, for the Tahoe-x1 chemistry token.

    Writes `drug_to_id` (`<pad>` = 0, then the table's drugs in order) and `drug_fps` (n_drugs + 1 rows of
    `n_bits`, row 0 zeros), as the reference `generate_fingerprints.py` does, without its defects.
    """

    table: str  # CSV / TSV / parquet, local or fsspec URL (the release's drug_metadata, tahoe_drug_smiles.csv)
    # the table's drug name column
    name_column: str = "drug"
    # the table's SMILES column
    smiles_column: str = "canonical_smiles"
    # Morgan radius
    radius: int = Field(2, ge=0)
    # fingerprint length
    n_bits: int = Field(2048, gt=0)
    # `error` stops with the list; `skip` leaves those drugs out (they map to <pad>)
    on_invalid_smiles: Literal["error", "skip"] = "error"
    # folder the drug files are written to
    output_root: str
    # name of the drug -> id JSON
    drug_to_id_file: PlainName = "drug_to_id.json"
    # name of the fingerprint array (.npy)
    fingerprints_file: PlainName = "drug_fps.npy"

    @property
    def drug_to_id_path(self) -> str:
        """Path of drug_to_id."""
        return _join(self.output_root, self.drug_to_id_file)

    @property
    def fingerprints_path(self) -> str:
        """Path of the fingerprint array."""
        return _join(self.output_root, self.fingerprints_file)


class DedupConfig(_Section):
    """`dedup:` — cells recorded twice in the corpus (equal content fingerprints; `cellcorpus dedup`)."""

    # report: `run` finds and reports them (report/dedup.json, id lists); drop: tokenize also leaves them out of
    # this build, keeping each group's first cell by id (counted as `filtered_duplicates`, pairs in the manifest)
    policy: Literal["report", "drop"] = "report"


class IoConfig(_Section):
    """`io:` — how outputs are written (never what they hold: not part of any output's identity)."""

    # O_DIRECT for outputs and the shuffle's parts: auto = local block-device filesystems only (io/direct.py)
    direct: Literal["auto", "on", "off"] = "auto"


class ExecutorConfig(_Section):
    """`executor:` — where units run: local process pool (default) or a Dask scheduler."""

    # a Dask scheduler address (tcp://host:port) or `local`; null = local processes
    dask: str | None = None
    # workers of a `local` Dask cluster
    dask_workers: int = Field(2, ge=1)


class Config(_Section):
    """A whole cellcorpus config; every section is optional until a stage needs it."""

    # the folder every location key a section leaves out is derived from (the seed's configs: `${output_root}/...`)
    output_root: str | None = None
    # build the vocabulary (`cellcorpus vocab`)
    vocab: VocabConfig | None = None
    # download CELLxGENE Census chunks (`cellcorpus download cellxgene`)
    cellxgene: CellxgeneConfig | None = None
    # download scBaseCamp / scBaseCount files (`cellcorpus download scbasecamp`)
    scbasecamp: RemoteSourceConfig | None = None
    # download the Tahoe-100M plates or release (`cellcorpus download tahoe`)
    tahoe: RemoteSourceConfig | None = None
    # tokenize the inputs into HF Arrow train/valid datasets (`cellcorpus tokenize`)
    huggingface: HuggingfaceConfig | None = None
    # export the datasets as MosaicML MDS shards (`cellcorpus mds`)
    mds: MdsConfig | None = None
    # drug ids and Morgan fingerprints for the chemistry token (`cellcorpus drugs`)
    drugs: DrugsConfig | None = None
    # per-gene statistics of the inputs, e.g. Geneformer's gene medians (`cellcorpus stats`)
    stats: StatsConfig | None = None
    # duplicate cells: report them, or drop them in the build (needs and turns on `huggingface.fingerprints`)
    dedup: DedupConfig | None = None
    # where work units run (local processes or Dask)
    executor: ExecutorConfig = Field(default_factory=lambda: ExecutorConfig.model_validate({}))
    # how outputs are written
    io: IoConfig = Field(default_factory=lambda: IoConfig.model_validate({}))
    # dotted key -> its text before resolution, for every value that came (maybe through `${key}` references)
    # from the environment: outputs record this reference, never the value (a secret stays out of manifests)
    _env_refs: dict[str, str] = PrivateAttr(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _dedup_records_fingerprints(cls, data: Any) -> Any:
        """A `dedup` section reads the cells' fingerprints: it turns `huggingface.fingerprints` on (off said
        explicitly is an error, not overruled)."""
        if isinstance(data, dict) and data.get("dedup") is not None and isinstance(data.get("huggingface"), dict):
            hf = data["huggingface"]
            if hf.get("fingerprints") is False:
                raise ValueError("dedup: needs huggingface.fingerprints (set to false): remove one of them")
            data = {**data, "huggingface": {**hf, "fingerprints": True}}
        return data

    def for_output(self, key: str, value: Any) -> Any:
        """What an output may record for config `key`: its `${oc.env:...}` reference when the value came
        from the environment, else the value itself."""
        return self._env_refs.get(key, value)

    def settings_for_output(self, section: str, settings: dict[str, Any]) -> dict[str, Any]:
        """A copy of `settings` (dumped from `section`) where every value from the environment is its reference."""

        def walk(node: Any, prefix: str) -> Any:
            if prefix in self._env_refs:
                return self._env_refs[prefix]
            if isinstance(node, dict):
                return {k: walk(v, f"{prefix}.{k}") for k, v in node.items()}
            if isinstance(node, list):
                return [walk(v, f"{prefix}.{i}") for i, v in enumerate(node)]
            return node

        return {k: walk(v, f"{section}.{k}") for k, v in settings.items()}

    def need(self, section: str) -> Any:
        """Return a section or raise a ConfigError naming it (a stage needs it)."""
        value = getattr(self, section)
        if value is None:
            raise ConfigError(f"{section}: section missing from the config (needed by this stage)")
        return value


def _format_validation_error(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            lines.append(f"{loc}: unknown key")
        elif e["type"] == "missing":
            lines.append(f"{loc}: required key missing")
        elif not loc:  # a rule across sections: its message names the keys (the input is the whole config)
            lines.append(e["msg"].removeprefix("Value error, "))
        else:
            lines.append(f"{loc}: {e['msg']} (got {e.get('input')!r})")
    return "; ".join(lines)


def configs_root() -> Path:
    """The folder of the configs shipped in the package (the repository's `configs/`)."""
    from importlib import resources

    return Path(str(resources.files("cellcorpus") / "configs"))


def shipped_config(name: str) -> Path | None:
    """The config shipped in the package that `name` means (`tahoe_100m`, `tahoe_100m.yaml`,
    `tahoe_x1_v2/tahoe_100m.yaml`), or None."""
    root = configs_root()
    stem = name.removesuffix(".yaml")
    every = sorted(root.rglob("*.yaml"))
    found = [p for p in every if p.relative_to(root).with_suffix("").as_posix() == stem]
    found = found or [p for p in every if p.stem == stem]
    return found[0] if len(found) == 1 else None


def load_config(path: str | Path | dict[str, Any], overrides: Sequence[str] = (), **settings: Any) -> Config:
    """Load, resolve and validate a config: a YAML path, a shipped config's name (`tahoe_100m`; see
    `cellcorpus config list`), or a dict of sections (as the YAML would read). `overrides` are OmegaConf dotlist
    items (`a.b=1`); `settings` are top-level keys, e.g. `load_config("tahoe_100m", output_root="/data")`."""
    overrides = [*overrides, *(f"{k}={_dotlist_value(v)}" for k, v in settings.items())]
    if isinstance(path, dict):
        return _load_mapping(OmegaConf.create(path), overrides, "config")
    if not Path(path).is_file() and (shipped := shipped_config(str(path))) is not None:
        path = shipped
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"config file not found: {path}", hint="a YAML path, or a shipped config's name (cellcorpus config list)"
        )
    try:
        raw = OmegaConf.load(path)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}:{where}: not valid YAML: {problem}") from exc
    except (UnicodeDecodeError, OSError) as exc:
        raise ConfigError(f"{path}: cannot read the config: {exc}") from exc
    return _load_mapping(raw, overrides, str(path))


def _dotlist_value(value: Any) -> str:
    """A Python value as dotlist text OmegaConf reads back as that value (None -> null, lists as YAML)."""
    if value is None:
        return "null"
    if isinstance(value, str | Path):
        return str(value)
    return str(yaml.safe_dump(value, default_flow_style=True)).strip().removesuffix("...").strip()


# OmegaConf resolvers a config may call. `${key}` references are not resolvers and always work; every other
# resolver (oc.create, oc.decode, oc.coerce, which imports any module it names, ...) is refused by name.
ALLOWED_RESOLVERS = frozenset({"oc.env"})
_RESOLVER_CALL = re.compile(r"\$\{\s*([A-Za-z_][\w.]*)\s*:")
_KEY_REFERENCE = re.compile(r"\$\{\s*([A-Za-z_][\w.]*)\s*\}")


def _strings(node: Any, prefix: str = "") -> dict[str, str]:
    """Every string leaf of an unresolved config, by dotted key (list items by index)."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    out: dict[str, str] = {}
    for k, v in items:
        key = f"{prefix}{k}"
        if isinstance(v, str):
            out[key] = v
        else:
            out.update(_strings(v, f"{key}."))
    return out


def _check_interpolations(raw: DictConfig, path: str) -> dict[str, str]:
    """Refuse resolvers outside ALLOWED_RESOLVERS (naming key and resolver); return the keys whose value comes
    from the environment, directly or through `${key}` references, with their unresolved text."""
    texts = _strings(OmegaConf.to_container(raw, resolve=False))
    for key, text in texts.items():
        for name in _RESOLVER_CALL.findall(text):
            if name not in ALLOWED_RESOLVERS:
                raise ConfigError(
                    f"{path}: {key}: the resolver '{name}' is not allowed",
                    hint="a config may use ${oc.env:NAME} (for paths) and ${other.key} references",
                )
    tainted = {k for k, t in texts.items() if "oc.env" in _RESOLVER_CALL.findall(t)}
    grew = True
    while grew:  # a key referring to an env-derived key (or to a section holding one) is env-derived too
        grew = False
        for key, text in texts.items():
            refs = _KEY_REFERENCE.findall(text)
            if key not in tainted and any(r == t or t.startswith(f"{r}.") for r in refs for t in tainted):
                tainted.add(key)
                grew = True
    return {k: texts[k] for k in sorted(tainted)}


def _dotlist(overrides: Sequence[str]) -> DictConfig:
    """`--set KEY=VALUE` items as a config. A VALUE is read as YAML (numbers, lists, null) and, where it is not
    valid YAML (`*.h5ad`, a leading backtick, `@` or `%`), kept as the string it is; an item without `=` is
    refused instead of silently setting the key to null (OmegaConf's `from_dotlist` does that)."""
    loader: Any = yaml.SafeLoader
    try:  # OmegaConf's own YAML flavour (floats like 1e-3), as `from_dotlist` reads values
        from omegaconf._yaml import get_yaml_loader

        loader = get_yaml_loader()
    except ImportError:  # a private module: plain safe YAML where it moved
        pass
    conf = OmegaConf.create({})
    for item in overrides:
        key, eq, text = item.partition("=")
        if not eq or not key.strip():
            raise ConfigError(f"--set {item}: expected KEY=VALUE", hint="e.g. --set output_root=/data")
        try:
            value = yaml.load(text, Loader=loader)
        except yaml.YAMLError:
            value = text
        OmegaConf.update(conf, key.strip(), value)
    return conf


def _load_mapping(raw: Any, overrides: Sequence[str], path: str) -> Config:
    """Merge overrides, resolve `${}` and validate; every problem is a ConfigError prefixed with `path`."""
    try:
        if not isinstance(raw, DictConfig):
            raise ConfigError(f"{path}: the config must be a mapping of sections, got a {type(raw).__name__}")
        if overrides:
            merged = OmegaConf.merge(raw, _dotlist(overrides))
            assert isinstance(merged, DictConfig)  # merging a dotlist into a mapping keeps a mapping
            raw = merged
        env_refs = _check_interpolations(raw, path)  # before resolving: a refused resolver never runs
        data = OmegaConf.to_container(raw, resolve=True)
    except OmegaConfBaseException as exc:
        raise ConfigError(f"{path}: {str(exc).splitlines()[0]}") from exc
    try:
        cfg = Config.model_validate(derive_paths(data))
    except ValidationError as exc:
        raise ConfigError(f"{path}: {_format_validation_error(exc)}") from exc
    cfg._env_refs.update(env_refs)
    return cfg


def derive_paths(data: Any) -> Any:
    """With a top-level `output_root`, every location key a section leaves out is derived from it (a key that is
    set, as in the seed's configs, is kept): vocab -> <root>/vocab; huggingface scratch -> <root>/work, datasets
    -> <root>/merged, the vocabulary -> the vocab section's file (else <root>/vocab/vocab.json); mds ->
    <root>/mds, reading the datasets; drugs -> <root>/drugs."""
    root = data.get("output_root") if isinstance(data, dict) else None
    if not isinstance(root, str) or not root:
        return data

    def fill(section: str, key: str, value: Any) -> None:
        found = data.get(section)
        if isinstance(found, dict) and key not in found:
            found[key] = value

    vocab = data.get("vocab") if isinstance(data.get("vocab"), dict) else None
    fill("vocab", "output_root", f"{root}/vocab")
    fill("huggingface", "output_root", f"{root}/work")
    fill("huggingface", "merged_dataset_root", f"{root}/merged")
    fill("huggingface", "vocab_output_root", vocab["output_root"] if vocab else f"{root}/vocab")
    fill("huggingface", "vocab_path", vocab.get("output_file", "vocab.json") if vocab else "vocab.json")
    fill("mds", "out_root", f"{root}/mds")
    hf = data.get("huggingface")
    fill(
        "mds", "root_dir", hf.get("merged_dataset_root", f"{root}/merged") if isinstance(hf, dict) else f"{root}/merged"
    )
    fill("drugs", "output_root", f"{root}/drugs")
    fill("stats", "output_root", f"{root}/stats")
    return data


# Keys that only say *where* things are. They never change an output's bytes, so a relative vs absolute
# spelling, or a finished output moved to another folder, must not look like another config.
HF_LOCATION_KEYS = frozenset(
    {"adata_dir", "output_root", "merged_dataset_root", "vocab_output_root", "vocab_path", "num_proc", "dataset_name"}
)
MDS_LOCATION_KEYS = frozenset({"out_root", "root_dir", "num_proc", "staging_dir"})
STATS_LOCATION_KEYS = frozenset({"output_root", "num_proc", "unit_cells"})  # (not in the results)


def config_hash(*parts: BaseModel | object) -> str:
    """Stable short hash of config sections (and any JSON-able extras), stored in manifests so the
    outputs of another config or other inputs are never mistaken for complete work.
    """
    payload = json.dumps(
        [p.model_dump(mode="json") if isinstance(p, BaseModel) else p for p in parts], sort_keys=True, default=str
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]
