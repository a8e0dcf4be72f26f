"""One preflight before any unit runs: what a later stage would trip over, found while it is cheap.

`run`, `tokenize`, `mds` and `download` call `preflight` first. It checks the whole config (every MDS
encoding, compression and hash; the columns the MDS stage will see, from obs columns + obs index +
joins; settings that contradict each other), the optional extras the settings need, the Dask scheduler,
and that every output root is writable. Problems that are the config's are ConfigErrors (exit 2);
legal-but-odd settings become one note each. Per-input checks (columns, gene coverage) need the
vocabulary and run at the start of tokenize (`sources.inputs.discover_and_inspect`), still before any unit.
"""

from __future__ import annotations

import importlib.util
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path

from cellcorpus.config import Config, HuggingfaceConfig
from cellcorpus.encodings import produced_columns
from cellcorpus.errors import ConfigError, InputError, MissingExtraError
from cellcorpus.exec.dask import check_dask_reachable
from cellcorpus.formats.mds import MdsSpec
from cellcorpus.io.join_index import check_columns, is_large_table
from cellcorpus.io.owned import WRITE_PROBE, check_claimable
from cellcorpus.io.paths import exists, filesystem, is_url
from cellcorpus.io.tables import load_table
from cellcorpus.layout import OUTPUT_RECORDS
from cellcorpus.manifest import TokenizeManifest, read_manifest
from cellcorpus.plan import Plan

__all__ = [
    "preflight",
    "preflight_once",
    "check_renames",
    "check_writable",
    "check_dask_reachable",
    "mds_input_columns",
    "produced_columns",
]

_SMALL_SHARD = 1 << 20  # an MDS size_limit below 1 MiB makes shards of a handful of cells


def check_writable(path: str, key: str) -> None:
    """Create `path` if needed and prove a file can be written there (then remove it)."""
    if is_url(path):
        try:
            fs, p = filesystem(path)
            fs.makedirs(p, exist_ok=True)
        except Exception as exc:  # every fsspec backend raises its own types
            raise ConfigError(f"{key}: cannot create {path}: {exc}") from exc
        return
    probe = Path(path) / f"{WRITE_PROBE}{uuid.uuid4().hex[:8]}"
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise ConfigError(f"{key}: cannot write to {path} ({reason})") from exc


def check_renames(hf: HuggingfaceConfig, index_column: str | None, index_known: bool = True) -> None:
    """`rename_columns` may not lose a column: its source must be a metadata column, its target neither a
    produced column nor another column's name (two `sample` columns would drop one silently)."""
    if not hf.rename_columns:
        return
    names = hf.model_copy(update={"rename_columns": {}}).metadata_columns(index_column)
    for src, dst in hf.rename_columns.items():
        key = f"huggingface.rename_columns.{src}"
        if src not in names and index_known:
            raise ConfigError(
                f"{key}: no input column '{src}' among the metadata columns ({', '.join(names) or 'none'})",
                hint="rename a column listed in obs_metadata_columns or a join's columns",
            )
        if dst in produced_columns(hf):
            raise ConfigError(f"{key}: '{dst}' is a column tokenize writes ({', '.join(produced_columns(hf))})")
        clash = [c for c in names if c != src and hf.rename_columns.get(c, c) == dst]
        if clash:
            raise ConfigError(
                f"{key}: '{dst}' is already the name of column '{clash[0]}'; both would be written as '{dst}'",
                hint="choose another name, or rename the other column too",
            )


def mds_input_columns(hf: HuggingfaceConfig, index_column: str | None) -> list[str]:
    """The columns tokenize writes, i.e. what the MDS stage can export."""
    return [*produced_columns(hf), *hf.metadata_columns(index_column)]


def _check_mds(cfg: Config, columns: list[str] | None, notes: list[str]) -> None:
    mds = cfg.mds
    if mds is None:
        return
    MdsSpec.create(mds.columns, mds.compression, mds.hashes, mds.size_limit)  # encodings, hashes, torch for pkl
    if columns is not None:
        missing = [c for c in mds.columns if c not in columns]
        if missing:
            raise ConfigError(
                f"mds.columns: {', '.join(repr(c) for c in missing)} will not be in the dataset",
                hint=f"tokenize writes: {', '.join(columns)} (add the column to huggingface.obs_metadata_columns "
                "or a join, or remove it from mds.columns)",
            )
    hf = cfg.huggingface
    if hf is not None and hf.split_parameters.test_size == 0 and "valid" in mds.splits:
        raise ConfigError(
            "mds.splits: 'valid' would be empty because huggingface.split_parameters.test_size is 0",
            hint="remove 'valid' from mds.splits, or set a test_size above 0",
        )
    if mds.size_limit < _SMALL_SHARD:
        notes.append(f"mds.size_limit is {mds.size_limit:,} bytes: shards will hold only a few cells each")
    if hf is not None and hf.min_vocab_genes == 0 and "pkl" in mds.columns.values():
        notes.append(
            "huggingface.min_vocab_genes is 0: cells with no gene in the vocabulary are kept, and the Tahoe-x1 "
            "collator rejects them"
        )


def _check_join_tables(hf: HuggingfaceConfig) -> None:
    """Every join table exists and has its key and columns (read once here; workers reuse the cache)."""
    for i, join in enumerate(hf.additional_metadata_info):
        if not Path(join.path).is_file():
            raise ConfigError(f"huggingface.additional_metadata_info.{i}.path: file not found: {join.path}")
        try:
            if is_large_table(join.path):  # indexed on disk by tokenize: its columns are checked here
                check_columns(join.path, [join.merge_keys.metadata_key, *join.columns])
            else:
                load_table(join.path, join.merge_keys.metadata_key, join.columns)
        except InputError as exc:
            # the key or a column named by the config is absent from the table: the config's problem
            raise ConfigError(f"huggingface.additional_metadata_info.{i}: {exc.message}", hint=exc.hint) from exc


def _tokenize_columns(hf: HuggingfaceConfig) -> list[str] | None:
    """Columns tokenize will write; None when the obs index name cannot be known yet (no input found)."""
    from cellcorpus.sources.inputs import obs_index_column, peek_first_input

    index_name = obs_index_column(hf, peek_first_input(hf))
    check_renames(hf, index_name, index_known=index_name is not None or not hf.add_obs_index)
    if index_name is None and hf.add_obs_index:
        return None  # the obs index's name is not known before the inputs exist: checked again at tokenize
    return mds_input_columns(hf, index_name)


# Within `run` (preflight_once) the whole config is checked once, up front: the stages' own calls then return
# the notes of that check (to the first stage that asks, so each is said once) instead of checking again.
_ONCE: ContextVar[dict[int, list[str]] | None] = ContextVar("cellcorpus_preflight_once", default=None)


@contextmanager
def preflight_once() -> Iterator[None]:
    """Inside the block, `preflight` checks each config once (the first call; `run`'s, which covers all)."""
    token = _ONCE.set({})
    try:
        yield
    finally:
        _ONCE.reset(token)


def preflight(plan: Plan, source: str | None = None) -> list[str]:
    """Check everything the plan's command (run / tokenize / mds / download) will need; return notes for the
    user.

    The MDS column check learns the obs index name from the first input file (by listing, before the inputs
    are inspected). `source` is the section `download` fetches.
    """
    once, key = _ONCE.get(), id(plan.cfg)
    if once is not None and key in once:
        notes, once[key] = once[key], []  # checked already in this command: its notes said once
        return notes
    notes = _preflight(plan, source)
    if once is not None:
        once[key] = list(notes)
    return notes


def _preflight(plan: Plan, source: str | None) -> list[str]:
    notes: list[str] = []
    cfg, command, layout = plan.cfg, plan.command, plan.layout
    hf = cfg.huggingface
    if plan.executor.dask:
        check_dask_reachable(plan.executor.dask)
    if command == "download" and source is not None:
        section = cfg.need(source)
        check_writable(section.output_root, f"{source}.output_root")
    columns: list[str] | None = None
    if command in ("run", "tokenize") and hf is not None:
        columns = _tokenize_columns(hf)
        if hf.split_parameters.test_size == 0:
            notes.append("huggingface.split_parameters.test_size is 0: the valid split will be empty")
        _check_join_tables(hf)
        check_writable(hf.output_root, "huggingface.output_root")
        check_writable(hf.merged_dataset_root, "huggingface.merged_dataset_root")
        for name, d in layout.scratch_dirs().items():  # folders tokenize writes and cleans: never a user's
            check_claimable(d, f"huggingface.output_root ({name}/)")
        check_claimable(layout.merged_root().local_dir, "huggingface.merged_dataset_root", OUTPUT_RECORDS)
    if command == "mds" and layout.mds_source is not None:
        manifest = read_manifest(layout.mds_source, "manifest.json", TokenizeManifest)
        if manifest is not None:
            columns = [*produced_columns(cfg.need("huggingface")), *manifest.metadata_columns]
    if command in ("run", "tokenize", "mds") and cfg.mds is not None and layout.mds is not None:
        _check_mds(cfg, columns, notes)
        if command != "tokenize":
            check_writable(cfg.mds.out_root, "mds.out_root")
        check_claimable(layout.mds.local_dir, "mds.out_root", OUTPUT_RECORDS)
    if command == "run" and cfg.drugs is not None and not exists(cfg.drugs.table):
        raise ConfigError(f"drugs.table: file not found: {cfg.drugs.table}")
    if command == "run" and cfg.drugs is not None and importlib.util.find_spec("rdkit") is None:
        raise MissingExtraError(
            "drugs: the fingerprints need RDKit, which is not installed",
            hint="pip install 'cellcorpus[chem]', or --set drugs=null to run without the fingerprints",
        )
    if command == "run" and cfg.vocab is not None and not Path(cfg.vocab.reference_adata).is_file():
        raise ConfigError(f"vocab.reference_adata: file not found: {cfg.vocab.reference_adata}")
    return notes
