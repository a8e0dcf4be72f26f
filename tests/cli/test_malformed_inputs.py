"""The malformed-input catalogue: every mistake a user makes, through the CLI, with real files.

Each case builds its inputs, runs one command and asserts what the user relies on: the exit code (2 for
the config's problems, 1 for the data's or the storage's), one `error:` line naming the file or key, no
traceback, and no marker (`state.json`, `index.json`, `manifest.json`) created, changed or removed — so
nothing half-written looks complete and nothing finished is lost. Legal-but-odd inputs run to the end
with one note, and their tokens equal the plain run's.
"""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from cellcorpus.cli import app
from tests._utils import GENES, arrow_rows, base_config, make_h5ad, random_corpus, write_vocab

runner = CliRunner()
MARKERS = ("state.json", "index.json", "manifest.json")


@dataclass
class Case:
    """A prepared mistake: the command line and what the user must see."""

    args: list[str]
    exit_code: int
    message: str  # regex the `error:` line must match (it names the file or key)
    env: dict[str, str | None] = field(default_factory=dict)


class Workspace:
    """A tmp folder with the base corpus (2 files x 120 cells), config helpers and a finished run to copy."""

    def __init__(self, root: Path, finished: Path) -> None:
        self.root = root
        self._finished = finished

    def corpus(self) -> Path:
        random_corpus(self.root, n_files=2, n_cells=120, seed=3)
        return self.root

    def finished(self) -> Path:
        """A copy of a complete tokenize + mds run (a copied output is still complete: paths are not identity)."""
        shutil.copytree(self._finished, self.root, dirs_exist_ok=True)
        return self.root

    def config(self, drop: tuple[str, ...] = (), **overrides) -> str:
        cfg = base_config(self.root)
        for key, value in overrides.items():
            node = cfg
            parts = key.split(".")
            for p in parts[:-1]:
                node = node.setdefault(p, {})
            node[parts[-1]] = value
        for key in drop:
            node = cfg
            parts = key.split(".")
            for p in parts[:-1]:
                node = node[p]
            node.pop(parts[-1])
        path = self.root / "config.yaml"
        path.write_text(yaml.safe_dump(cfg))
        return str(path)

    def tokenize(self, **overrides) -> list[str]:
        return ["tokenize", self.config(**overrides)]


CASES: dict[str, Callable[[Workspace], Case]] = {}


def case(fn: Callable[[Workspace], Case]) -> Callable[[Workspace], Case]:
    CASES[fn.__name__] = fn
    return fn


# ---- the config file itself -------------------------------------------------------------------------
@case
def yaml_syntax_error(w: Workspace) -> Case:
    path = w.root / "broken.yaml"
    path.write_text("huggingface:\n  adata_dir: [unclosed\n  gene_col: x\n")
    return Case(["tokenize", str(path)], 2, r"broken\.yaml: line \d+, column \d+: not valid YAML")


@case
def config_is_a_list(w: Workspace) -> Case:
    path = w.root / "list.yaml"
    path.write_text("- a\n- b\n")
    return Case(["tokenize", str(path)], 2, r"list\.yaml: the config must be a mapping")


@case
def config_file_missing(w: Workspace) -> Case:
    return Case(["run", str(w.root / "nope.yaml")], 2, r"config file not found: .*nope\.yaml")


@case
def config_not_utf8(w: Workspace) -> Case:
    path = w.root / "binary.yaml"
    path.write_bytes(b"\xff\xfe\x00garbage\x9c")
    return Case(["tokenize", str(path)], 2, r"binary\.yaml")


@case
def unknown_key(w: Workspace) -> Case:
    return Case(
        w.tokenize(**{"huggingface.filter_cels": {"min_genes": 1}}), 2, r"huggingface\.filter_cels: unknown key"
    )


@case
def wrong_type(w: Workspace) -> Case:
    return Case(w.tokenize(**{"huggingface.unit_cells": "many"}), 2, r"huggingface\.unit_cells: ")


@case
def required_key_missing(w: Workspace) -> Case:
    return Case(
        ["tokenize", w.config(drop=("huggingface.adata_dir",))], 2, r"huggingface\.adata_dir: required key missing"
    )


@case
def split_test_size_out_of_range(w: Workspace) -> Case:
    return Case(
        w.tokenize(**{"huggingface.split_parameters.test_size": 1.5}), 2, r"split_parameters\.test_size: .*\[0, 1\)"
    )


@case
def broken_interpolation(w: Workspace) -> Case:
    return Case(w.tokenize(**{"huggingface.output_root": "${nowhere}/work"}), 2, r"config\.yaml: .*nowhere")


@case
def set_without_value(w: Workspace) -> Case:
    return Case(["tokenize", w.config(), "--set", "huggingface.num_proc"], 2, r"huggingface\.num_proc")


@case
def set_unknown_key(w: Workspace) -> Case:
    return Case(["tokenize", w.config(), "--set", "huggingface.gene_coll=x"], 2, r"huggingface\.gene_coll: unknown key")


# ---- CLI values ---------------------------------------------------------------------------------------
@case
def num_proc_zero(w: Workspace) -> Case:
    w.corpus()
    return Case([*w.tokenize(), "--num-proc", "0"], 2, r"--num-proc")


@case
def num_proc_negative(w: Workspace) -> Case:
    w.corpus()
    return Case(["mds", w.config(), "--num-proc", "-1"], 2, r"--num-proc")


@case
def dask_scheduler_unreachable(w: Workspace) -> Case:
    w.corpus()
    return Case(
        [*w.tokenize(), "--dask", "tcp://127.0.0.1:9"], 2, r"no Dask scheduler reachable at tcp://127\.0\.0\.1:9"
    )


@case
def dask_address_malformed(w: Workspace) -> Case:
    w.corpus()
    return Case([*w.tokenize(), "--dask", "my-cluster"], 2, r"'my-cluster' is not a scheduler address")


@case
def unknown_download_source(w: Workspace) -> Case:
    return Case(["download", "geo", w.config()], 2, r"unknown source 'geo'")


# ---- MDS settings, found before tokenization --------------------------------------------------------
@case
def mds_compression_lz4(w: Workspace) -> Case:
    w.corpus()
    return Case(w.tokenize(**{"mds.compression": "lz4"}), 2, r"mds\.compression: 'lz4' is not supported")


@case
def mds_encoding_typo(w: Workspace) -> Case:
    w.corpus()
    cols = {"genes": "ndarray:int23", "expressions": "ndarray:float32", "id": "int64"}
    return Case(w.tokenize(**{"mds.columns": cols}), 2, r"mds\.columns\.genes: encoding 'ndarray:int23'")


@case
def mds_column_tokenize_will_not_write(w: Workspace) -> Case:
    w.corpus()
    cols = {"genes": "pkl", "expressions": "pkl", "Cell_ID_Cellosaur": "str"}
    return Case(["run", w.config(**{"mds.columns": cols})], 2, r"mds\.columns: 'Cell_ID_Cellosaur' will not be in")


@case
def mds_unknown_hash(w: Workspace) -> Case:
    w.corpus()
    return Case(w.tokenize(**{"mds.hashes": ["md6"]}), 2, r"mds\.hashes: unknown hash algorithm 'md6'")


@case
def mds_hashes_unsorted(w: Workspace) -> Case:
    w.corpus()
    return Case(w.tokenize(**{"mds.hashes": ["xxh64", "sha1"]}), 2, r"mds\.hashes: must be sorted")


@case
def valid_split_exported_with_test_size_zero(w: Workspace) -> Case:
    w.corpus()
    return Case(w.tokenize(**{"huggingface.split_parameters.test_size": 0}), 2, r"mds\.splits: 'valid' would be empty")


# ---- inputs that do not fit the config (config-class: exit 2) ----------------------------------------
@case
def gene_col_missing_from_a_file(w: Workspace) -> Case:
    w.corpus()
    make_h5ad(w.root / "raw" / "f9.h5ad", np.ones((3, 5)), GENES, var_col="feature_id")
    return Case(w.tokenize(), 2, r"huggingface\.gene_col: 'gene_id' is not a var column of .*f9\.h5ad")


@case
def obs_column_missing(w: Workspace) -> Case:
    w.corpus()
    return Case(
        w.tokenize(**{"huggingface.obs_metadata_columns": ["drug"]}),
        2,
        r"huggingface\.obs_metadata_columns\.0: 'drug' is not an obs column of .*f0\.h5ad",
    )


@case
def obs_filter_key_missing(w: Workspace) -> Case:
    w.corpus()
    flt = {"key": "pass_filter", "value": "full"}
    return Case(w.tokenize(**{"huggingface.obs_filter": flt}), 2, r"huggingface\.obs_filter\.key: 'pass_filter'")


def _join(table: Path, adata_key: str = "drug", key: str = "drug", columns=("moa",)) -> list[dict]:
    return [{"path": str(table), "merge_keys": {"metadata_key": key, "adata_key": adata_key}, "columns": list(columns)}]


@case
def join_adata_key_missing(w: Workspace) -> Case:
    w.corpus()
    table = w.root / "drugs.csv"
    pd.DataFrame({"drug": ["d0"], "moa": ["m"]}).to_csv(table, index=False)
    joins = _join(table)
    return Case(
        w.tokenize(**{"huggingface.additional_metadata_info": joins}),
        2,
        r"additional_metadata_info\.0\.merge_keys\.adata_key: 'drug' is not an obs column of .*f0\.h5ad",
    )


@case
def join_table_not_found(w: Workspace) -> Case:
    w.corpus()
    joins = _join(w.root / "nope.csv")
    return Case(
        w.tokenize(**{"huggingface.additional_metadata_info": joins}),
        2,
        r"additional_metadata_info\.0\.path: file not found: .*nope\.csv",
    )


@case
def join_table_without_key_column(w: Workspace) -> Case:
    random_corpus(w.root, n_files=2, n_cells=120, seed=3, n_drugs=3)
    table = w.root / "drugs.csv"
    pd.DataFrame({"name": ["d0"], "moa": ["m"]}).to_csv(table, index=False)
    joins = _join(table)
    return Case(
        w.tokenize(**{"huggingface.additional_metadata_info": joins}),
        2,
        r"additional_metadata_info\.0: .*drugs\.csv: metadata table has no column\(s\) \['drug'\]",
    )


@case
def join_table_without_value_column(w: Workspace) -> Case:
    random_corpus(w.root, n_files=2, n_cells=120, seed=3, n_drugs=3)
    table = w.root / "drugs.tsv"
    pd.DataFrame({"drug": ["d0"], "target": ["t"]}).to_csv(table, index=False, sep="\t")
    joins = _join(table)
    return Case(
        w.tokenize(**{"huggingface.additional_metadata_info": joins}),
        2,
        r"drugs\.tsv: metadata table has no column\(s\) \['moa'\]",
    )


@case
def symbols_in_gene_col(w: Workspace) -> Case:
    """A counts matrix keyed by gene symbols: 0% of the genes map; stop, and name the fix."""
    w.corpus()
    (w.root / "raw" / "f1.h5ad").unlink()
    make_h5ad(w.root / "raw" / "f1.h5ad", np.ones((4, 5)), ["TP53", "EGFR", "MYC", "CD4", "ACTB"])
    return Case(w.tokenize(), 2, r"huggingface\.gene_col: only 0\.00% of the genes of .*f1\.h5ad \('gene_id': 'TP53'")


@case
def gene_col_points_at_symbols_but_ids_exist(w: Workspace) -> Case:
    w.corpus()
    return Case(w.tokenize(**{"huggingface.gene_col": "index"}), 2, r"huggingface\.gene_col: only 0\.00%")


@case
def adata_dir_missing(w: Workspace) -> Case:
    write_vocab(w.root / "vocab" / "vocab.json")
    return Case(w.tokenize(), 2, r"huggingface\.adata_dir: folder not found")


@case
def vocabulary_missing(w: Workspace) -> Case:
    w.corpus()
    (w.root / "vocab" / "vocab.json").unlink()
    return Case(w.tokenize(), 2, r"vocabulary not found: .*vocab\.json")


@case
def cls_token_not_in_vocabulary(w: Workspace) -> Case:
    w.corpus()
    return Case(w.tokenize(**{"huggingface.cls_token": "<start>"}), 2, r"huggingface\.cls_token: '<start>'")


@case
def vocab_reference_missing(w: Workspace) -> Case:
    w.corpus()
    vocab = {"reference_adata": str(w.root / "ref.h5ad"), "output_root": str(w.root / "vocab")}
    return Case(["run", w.config(vocab=vocab)], 2, r"vocab\.reference_adata: file not found")


# ---- finished work is never replaced by another config's -------------------------------------------
@case
def rerun_with_other_settings_on_finished_output(w: Workspace) -> Case:
    w.finished()
    return Case(w.tokenize(**{"huggingface.pad_value": -1}), 2, r"holds a finished dataset made with other settings")


@case
def mds_rerun_with_other_settings_on_finished_export(w: Workspace) -> Case:
    w.finished()
    return Case(["mds", w.config(**{"mds.compression": "zstd:9"})], 2, r"mds\.out_root: .* made with other settings")


@case
def foreign_dataset_in_the_output_folder(w: Workspace) -> Case:
    w.corpus()
    foreign = w.root / "merged" / "train.dataset"
    foreign.mkdir(parents=True)
    (foreign / "state.json").write_text('{"_data_files": []}')
    return Case(w.tokenize(), 2, r"merged_dataset_root: .*merged already holds files cellcorpus did not write \(train")


@case
def output_root_below_a_file(w: Workspace) -> Case:
    w.corpus()
    (w.root / "afile").write_text("x")
    return Case(
        w.tokenize(**{"huggingface.merged_dataset_root": str(w.root / "afile" / "merged")}),
        2,
        r"huggingface\.merged_dataset_root: cannot write to .*afile/merged",
    )


@case
def mds_before_tokenize(w: Workspace) -> Case:
    w.corpus()
    return Case(["mds", w.config()], 2, r"mds\.root_dir: no complete dataset for split 'train'")


@case
def verify_before_tokenize(w: Workspace) -> Case:
    w.corpus()
    return Case(["verify", w.config()], 2, r"nothing to verify: no manifest in .*merged")


# ---- unusable data (exit 1) ---------------------------------------------------------------------------
@case
def no_h5ad_files(w: Workspace) -> Case:
    write_vocab(w.root / "vocab" / "vocab.json")
    (w.root / "raw").mkdir()
    (w.root / "raw" / "notes.txt").write_text("x")
    return Case(w.tokenize(), 1, r"no \.h5ad files found under .*raw")


@case
def not_an_hdf5_file(w: Workspace) -> Case:
    w.corpus()
    (w.root / "raw" / "f2.h5ad").write_bytes(os.urandom(4096))
    return Case(w.tokenize(), 1, r"f2\.h5ad: not a readable \.h5ad")


@case
def truncated_h5ad(w: Workspace) -> Case:
    w.corpus()
    p = w.root / "raw" / "f1.h5ad"
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    return Case(w.tokenize(), 1, r"f1\.h5ad")


@case
def file_with_no_cells(w: Workspace) -> Case:
    w.corpus()
    make_h5ad(w.root / "raw" / "f2.h5ad", np.zeros((0, 5)), GENES)
    return Case(w.tokenize(), 1, r"f2\.h5ad: file has no cells")


@case
def file_with_no_genes(w: Workspace) -> Case:
    w.corpus()
    make_h5ad(w.root / "raw" / "f2.h5ad", np.zeros((3, 0)), [])
    return Case(w.tokenize(), 1, r"f2\.h5ad: file has no genes")


@case
def corrupt_gzip(w: Workspace) -> Case:
    w.corpus()
    data = gzip.compress((w.root / "raw" / "f0.h5ad").read_bytes())
    (w.root / "raw" / "f2.h5ad.gz").write_bytes(data[:200] + bytes(200) + data[400:])
    return Case(w.tokenize(), 1, r"f2\.h5ad\.gz: corrupt gzip file")


@case
def negative_counts(w: Workspace) -> Case:
    w.corpus()
    make_h5ad(w.root / "raw" / "f2.h5ad", np.array([[1.0, -3, 0, 0, 1]] * 3), GENES)
    return Case(w.tokenize(), 1, r"f2\.h5ad rows 0-3: 3 negative count value")


@case
def nan_counts(w: Workspace) -> Case:
    w.corpus()
    make_h5ad(w.root / "raw" / "f2.h5ad", np.array([[1.0, np.nan, 0, 0, 1]] * 3), GENES)
    return Case(w.tokenize(), 1, r"f2\.h5ad rows 0-3: 3 NaN/infinite count value")


@case
def duplicated_gene_ids(w: Workspace) -> Case:
    w.corpus()
    make_h5ad(w.root / "raw" / "f2.h5ad", np.ones((3, 5)), [GENES[0], GENES[0] + ".2", *GENES[2:]])
    return Case(w.tokenize(), 1, r"f2\.h5ad: duplicated gene ids map to the same token")


@case
def filter_leaves_no_cells(w: Workspace) -> Case:
    w.corpus()
    return Case(w.tokenize(**{"huggingface.filter_cells": {"min_counts": 10_000}}), 1, r"no cells left after filters")


@case
def valid_split_would_be_empty(w: Workspace) -> Case:
    write_vocab(w.root / "vocab" / "vocab.json")
    make_h5ad(w.root / "raw" / "a.h5ad", np.ones((2, 5)), GENES)
    return Case(
        w.tokenize(**{"huggingface.split_parameters.test_size": 0.01}), 1, r"the valid split would have 0 cells"
    )


@case
def min_length_drops_every_sample(w: Workspace) -> Case:
    w.finished()
    shutil.rmtree(w.root / "mds")
    return Case(["mds", w.config(**{"mds.min_length": 1000})], 1, r"mds: the train split would have 0 samples")


@case
def truncated_tokenize_manifest(w: Workspace) -> Case:
    w.finished()
    m = w.root / "merged" / "manifest.json"
    m.write_text(m.read_text()[:50])
    return Case(w.tokenize(), 1, r"merged/manifest\.json: damaged file, not valid JSON")


@case
def truncated_state_json_caught_by_verify(w: Workspace) -> Case:
    w.finished()
    s = w.root / "merged" / "train.dataset" / "state.json"
    s.write_text(s.read_text()[:30])
    return Case(["verify", w.config()], 1, r"train\.dataset/state\.json: damaged file")


@case
def deleted_mds_manifest_caught_by_verify(w: Workspace) -> Case:
    w.finished()
    (w.root / "mds" / "manifest.json").unlink()
    return Case(["verify", w.config()], 1, r"mds manifest \(manifest\.json\): .*mds/manifest\.json: missing")


@case
def truncated_writer_index_caught_by_verify(w: Workspace) -> Case:
    w.finished()
    idx = w.root / "mds" / "train" / "00000" / "index.json"
    idx.write_text(idx.read_text()[:40])
    return Case(["verify", w.config()], 1, r"train/00000/index\.json: damaged file")


@case
def truncated_merged_index_caught_by_verify(w: Workspace) -> Case:
    w.finished()
    idx = w.root / "mds" / "valid" / "index.json"
    idx.write_text(idx.read_text()[:40])
    return Case(["verify", w.config()], 1, r"valid/index\.json: damaged file")


# ---- storage faults (need a tmpfs: root, or skipped) ---------------------------------------------------
def _mount_tmpfs(target: Path, options: str) -> None:
    target.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")


@case
def read_only_output_folder(w: Workspace) -> Case:
    w.corpus()
    _mount_tmpfs(w.root / "ro", "ro,size=1m")
    return Case(
        w.tokenize(**{"huggingface.merged_dataset_root": str(w.root / "ro" / "merged")}),
        2,
        r"huggingface\.merged_dataset_root: cannot write to .*ro/merged \(Read-only file system\)",
    )


def _full_disk(w: Workspace) -> Path:
    """A small tmpfs at `<root>/full`, filled: the preflight's empty probe file still fits, a real write does not."""
    folder = w.root / "full"
    _mount_tmpfs(folder, "size=64k")
    with open(folder / "filler", "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError:
            pass
    return folder


@case
def disk_full_during_tokenize(w: Workspace) -> Case:
    w.corpus()
    full = _full_disk(w)
    return Case(w.tokenize(**{"huggingface.output_root": str(full / "work")}), 1, r"No space left on device")


@case
def disk_full_while_writing_mds(w: Workspace) -> Case:
    """Shards are written past the page cache (io.direct): a full disk still ends in the storage error."""
    w.finished()
    full = _full_disk(w)
    return Case(["mds", w.config(**{"mds.out_root": str(full / "mds")})], 1, r"No space left on device")


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """One complete tokenize + mds run; cases copy it (a moved output stays complete)."""
    root = tmp_path_factory.mktemp("finished")
    random_corpus(root, n_files=2, n_cells=120, seed=3)
    w = Workspace(root, root)
    for cmd in ("tokenize", "mds"):
        result = runner.invoke(app, [cmd, w.config()])
        assert result.exit_code == 0, result.output
    return root


def _markers(root: Path) -> dict[str, bytes]:
    """Files that claim a split or a stage is complete (a writer's own index.json claims only its unit)."""
    found = {str(p.relative_to(root)): p.read_bytes() for name in MARKERS for p in root.rglob(name)}
    return {k: v for k, v in found.items() if not (k.endswith("index.json") and Path(k).parent.name.isdigit())}


@pytest.fixture
def workspace(tmp_path, finished_run):
    yield Workspace(tmp_path, finished_run)
    for mount in (tmp_path / "ro", tmp_path / "full"):
        if mount.is_mount():
            subprocess.run(["umount", str(mount)], check=False)


@pytest.mark.parametrize("name", sorted(CASES))
def test_malformed_input(name, workspace, monkeypatch):
    c = CASES[name](workspace)
    for module, value in c.env.items():
        monkeypatch.setitem(sys.modules, module, value)
    before = _markers(workspace.root)
    result = runner.invoke(app, c.args)
    out = result.output
    assert result.exit_code == c.exit_code, out
    assert "Traceback" not in out, out
    errors = [line for line in out.splitlines() if line.startswith(("error:", "Error", "│ Invalid", "Invalid"))]
    if c.message.startswith("--num-proc"):  # typer's own usage error (exit 2) for a value below the minimum
        assert "Invalid value for '--num-proc'" in out, out
    else:
        assert len(errors) == 1, out
        import re

        assert re.search(c.message, errors[0]), out
    assert _markers(workspace.root) == before, "a marker file was created, changed or removed"


def test_catalogue_is_large_enough():
    assert len(CASES) >= 40


def test_extra_hint_keeps_its_brackets(workspace, monkeypatch):
    """rich must not eat `[chem]` in a pip hint as markup."""
    workspace.corpus()
    (workspace.root / "drugs.csv").write_text("drug,canonical_smiles\nd0,CCO\n")
    drugs = {"table": str(workspace.root / "drugs.csv"), "output_root": str(workspace.root / "drugs")}
    monkeypatch.setitem(sys.modules, "rdkit", None)
    result = runner.invoke(app, ["run", workspace.config(drugs=drugs)])
    assert result.exit_code == 1 and "pip install 'cellcorpus[chem]'" in result.output, result.output


def test_debug_shows_the_traceback(workspace):
    workspace.corpus()
    result = runner.invoke(app, [*workspace.tokenize(**{"mds.compression": "lz4"}), "--debug"])
    assert result.exit_code == 2 and "Traceback" in result.output


# ---- legal but odd: runs, says so once, tokens as in the plain run -----------------------------------
def _tokens(root: Path) -> dict[int, tuple[list[int], list[float]]]:
    rows = arrow_rows(root / "merged" / "train.dataset") + arrow_rows(root / "merged" / "valid.dataset")
    return {r["id"]: (r["genes"], r["expressions"]) for r in rows}


@pytest.fixture(scope="module")
def plain_tokens(finished_run) -> dict:
    return _tokens(finished_run)


def _run_ok(w: Workspace, *args: str, **overrides) -> str:
    result = runner.invoke(app, ["tokenize", w.config(**overrides), *args])
    assert result.exit_code == 0, result.output
    return result.output


def test_test_size_zero_is_noted_and_keeps_every_cell(workspace, plain_tokens):
    workspace.corpus()
    out = _run_ok(workspace, **{"huggingface.split_parameters.test_size": 0, "mds.splits": ["train"]})
    assert out.count("test_size is 0") == 1
    assert arrow_rows(workspace.root / "merged" / "valid.dataset") == []
    assert _tokens(workspace.root) == plain_tokens


def test_tiny_mds_size_limit_is_noted(workspace):
    workspace.finished()
    shutil.rmtree(workspace.root / "mds")
    result = runner.invoke(app, ["mds", workspace.config(**{"mds.size_limit": 64})])
    assert result.exit_code == 0, result.output
    assert result.output.count("mds.size_limit is 64 bytes") == 1


def test_fractional_counts_are_noted_per_file_and_kept(workspace):
    write_vocab(workspace.root / "vocab" / "vocab.json")
    make_h5ad(workspace.root / "raw" / "norm.h5ad", np.full((40, 5), 0.5, dtype=np.float32), GENES)
    out = _run_ok(workspace)
    assert out.count("norm.h5ad: 200 non-integer count value(s)") == 1
    assert all(e[1:] == [0.5] * 5 for _, e in _tokens(workspace.root).values())


def test_empty_gene_ids_are_noted(workspace):
    write_vocab(workspace.root / "vocab" / "vocab.json")
    make_h5ad(workspace.root / "raw" / "a.h5ad", np.ones((40, 5)), [*GENES[:4], ""])
    out = _run_ok(workspace)
    assert out.count("a.h5ad: 1 gene(s) with an empty id in 'gene_id'") == 1
    assert all(g[1:] == [3, 4, 5, 6] for g, _ in _tokens(workspace.root).values())


def test_gzipped_inputs_tokenize_like_plain_ones(workspace, plain_tokens):
    workspace.corpus()
    for p in sorted((workspace.root / "raw").glob("*.h5ad")):
        p.with_suffix(".h5ad.gz").write_bytes(gzip.compress(p.read_bytes()))
        p.unlink()
    _run_ok(workspace)
    assert _tokens(workspace.root) == plain_tokens


def test_copied_finished_output_is_already_complete(workspace):
    workspace.finished()
    before = _markers(workspace.root)
    result = runner.invoke(app, ["run", workspace.config()])
    assert result.exit_code == 0, result.output
    assert "tokenize: already complete" in result.output and "mds: already complete" in result.output
    assert _markers(workspace.root) == before
