"""Issue 20's edge cases through the CLI: stale inputs, lost columns, two runs on one output, finished outputs
rebuilt in place, swapped drug ids, leftovers, and the tracebacks that must be one-line errors.

Sibling of test_malformed_inputs.py: each case asserts the exit code, the message a user sees and that nothing
outside the tool's own records changed.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from cellcorpus.cli import app
from cellcorpus.io.lock import LOCK_NAME
from tests._utils import GENES, arrow_rows, config_file, make_h5ad, random_corpus

runner = CliRunner()


def _ok(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    return result.output


def _fails(code: int, message: str, *args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], result.output
    return result.output


def _tokens(root: Path) -> list[tuple]:
    rows = arrow_rows(root / "merged" / "train.dataset") + arrow_rows(root / "merged" / "valid.dataset")
    return sorted((r["genes"], r["expressions"]) for r in rows)


# ---- 5: a replaced .h5ad.gz is never read from its stale decompressed copy --------------------------------
def test_replaced_gz_input_is_decompressed_again(tmp_path):
    def gz_corpus(root: Path, seed: int) -> None:
        random_corpus(root, n_files=1, n_cells=90, seed=seed)
        plain = root / "raw" / "f0.h5ad"
        (root / "raw" / "f0.h5ad.gz").write_bytes(gzip.compress(plain.read_bytes()))
        plain.unlink()

    gz_corpus(tmp_path / "want", seed=11)  # what the replaced file holds, tokenized fresh
    _ok("tokenize", config_file(tmp_path / "want"))
    root = tmp_path / "run"
    gz_corpus(root, seed=10)
    cfg = config_file(root)
    _ok("tokenize", cfg)
    first = _tokens(root)
    gz_corpus(root, seed=11)  # the user replaces the input under the same name
    _ok("tokenize", cfg)
    assert _tokens(root) == _tokens(tmp_path / "want") != first
    assert "already complete" in _ok("tokenize", cfg)


# ---- 6: a rename never loses a column --------------------------------------------------------------------
@pytest.fixture
def two_columns(tmp_path) -> Path:
    random_corpus(tmp_path, n_files=1, n_cells=40, seed=1)
    obs = {"drug": [f"d{i % 3}" for i in range(40)], "sample": [f"s{i % 2}" for i in range(40)]}
    make_h5ad(tmp_path / "raw" / "f0.h5ad", np.eye(40, len(GENES)) * 3, GENES, obs)
    return tmp_path


@pytest.mark.parametrize(
    "rename, message",
    [
        ({"drug": "sample"}, "huggingface.rename_columns.drug: 'sample' is already the name of column 'sample'"),
        ({"drug": "genes"}, "huggingface.rename_columns.drug: 'genes' is a column tokenize writes"),
        ({"drug": "id"}, "huggingface.rename_columns.drug: 'id' is a column tokenize writes"),
        ({"dose": "dose_um"}, "huggingface.rename_columns.dose: no input column 'dose' among the metadata columns"),
    ],
)
def test_rename_that_would_lose_a_column_is_refused(two_columns, rename, message):
    cfg = config_file(
        two_columns,
        **{"huggingface.obs_metadata_columns": ["drug", "sample"], "huggingface.rename_columns": rename},
    )
    _fails(2, message, "tokenize", cfg)
    assert not (two_columns / "merged" / "train.dataset").exists()


# ---- 7: one writer per output root -----------------------------------------------------------------------
_HOLDER = textwrap.dedent(
    """
    import sys, time
    from cellcorpus.io.lock import hold_locks
    with hold_locks([("test", sys.argv[1])], "holder"):
        print("held", flush=True)
        time.sleep(60)
    """
)


def test_second_run_exits_at_once_naming_the_holder(tmp_path):
    random_corpus(tmp_path, n_files=1, n_cells=40, seed=1)
    cfg = config_file(tmp_path)
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(tmp_path / "merged")], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        out = _fails(2, "huggingface.merged_dataset_root: ", "tokenize", cfg)
        assert f"is in use by another cellcorpus run (`holder` on host {os.uname().nodename}, pid {holder.pid}" in out
        assert not (tmp_path / "merged" / "train.dataset").exists() and not (tmp_path / "work").exists()
    finally:
        holder.kill()
        holder.wait()
    _ok("tokenize", cfg)  # the kernel dropped the dead holder's lock: taken over


def test_lock_left_by_a_killed_run_is_taken_over_with_a_note(tmp_path):
    random_corpus(tmp_path, n_files=1, n_cells=40, seed=1)
    (tmp_path / "merged").mkdir()
    stale = {"host": "gone", "pid": 999999, "command": "run", "started": "2026-01-01T00:00:00"}
    (tmp_path / "merged" / LOCK_NAME).write_text(json.dumps(stale))
    result = runner.invoke(app, ["tokenize", config_file(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "took over the lock left by a run that ended without releasing it (`run` on host gone, pid 999999" in (
        result.output
    )
    assert not (tmp_path / "merged" / LOCK_NAME).exists()


@pytest.mark.slow
def test_ten_concurrent_runs_damage_nothing(tmp_path):
    """Two `cellcorpus run`s started together on one output, ten times: each pair ends with one run done and the
    other refused at once (or finding the work complete), and the output always verifies."""
    damaged, refused = 0, 0
    for trial in range(10):
        root = tmp_path / f"t{trial}"
        random_corpus(root, n_files=2, n_cells=300, seed=trial)
        cfg = config_file(root, **{"mds.columns": {"genes": "pkl", "expressions": "pkl", "id": "int64"}})
        cmd = [sys.executable, "-m", "cellcorpus", "run", cfg]
        procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
        outs = [(p.wait(), p.stdout.read()) for p in procs]
        codes = sorted(code for code, _ in outs)
        assert codes in ([0, 0], [0, 2]), outs
        for code, text in outs:
            if code == 2:
                refused += 1
                assert "is in use by another cellcorpus run" in text and "this run changed nothing" in text, text
        verify = subprocess.run([sys.executable, "-m", "cellcorpus", "verify", cfg], capture_output=True, text=True)
        damaged += verify.returncode != 0
        assert "already complete" in _ok("run", cfg)
    assert damaged == 0 and refused > 0


# ---- 8: a finished MDS export is not rebuilt from another dataset -------------------------------------
def test_finished_mds_export_of_another_dataset_is_refused(tmp_path):
    random_corpus(tmp_path, n_files=1, n_cells=120, seed=1)
    cfg = config_file(tmp_path)
    _ok("tokenize", cfg)
    _ok("mds", cfg)
    index = (tmp_path / "mds" / "valid" / "index.json").read_bytes()
    other = {
        "huggingface.merged_dataset_root": str(tmp_path / "merged2"),
        "huggingface.split_parameters.test_size": 0.5,
        "mds.root_dir": str(tmp_path / "merged2"),
    }
    cfg2 = config_file(tmp_path, **other)
    _ok("tokenize", cfg2)
    out = _fails(2, "mds.out_root: ", "mds", cfg2)
    assert f"holds a finished MDS export made with other settings (source: '{tmp_path}/merged' -> " in out
    assert f"'{tmp_path}/merged2')" in out and "it is left untouched" in out
    assert (tmp_path / "mds" / "valid" / "index.json").read_bytes() == index


def test_finished_mds_export_names_the_settings_that_differ(tmp_path):
    random_corpus(tmp_path, n_files=1, n_cells=60, seed=1)
    _ok("tokenize", config_file(tmp_path))
    _ok("mds", config_file(tmp_path))
    out = _fails(2, "mds.out_root: ", "mds", config_file(tmp_path, **{"mds.compression": None, "mds.min_length": 2}))
    assert "(compression: 'zstd' -> None; min_length: None -> 2)" in out


# ---- 9 + 10: drug ids checked; leftovers removed by the rerun and reported by verify ----------------------
@pytest.fixture
def with_drugs(tmp_path):
    pytest.importorskip("rdkit")
    random_corpus(tmp_path, n_files=1, n_cells=60, seed=1, n_drugs=3)
    table = tmp_path / "drugs.csv"
    pd.DataFrame({"drug": ["d0", "d1", "d2"], "canonical_smiles": ["CCO", "CC(=O)O", "c1ccccc1"]}).to_csv(
        table, index=False
    )
    drugs = {"table": str(table), "output_root": str(tmp_path / "drugs")}
    cfg = config_file(tmp_path, drugs=drugs, **{"huggingface.obs_metadata_columns": ["drug"]})
    for command in ("drugs", "tokenize", "mds", "verify"):
        _ok(command, cfg)
    return tmp_path, cfg


def test_swapped_drug_ids_fail_verify(with_drugs):
    root, cfg = with_drugs
    path = root / "drugs" / "drug_to_id.json"
    ids = json.loads(path.read_text())
    ids["d0"], ids["d1"] = ids["d1"], ids["d0"]
    path.write_text(json.dumps(ids, indent=2))
    out = _fails(1, "drug_to_id as written: ", "verify", cfg)
    assert f"hint: the drug files differ from what was written: delete {root / 'drugs'} and run `cellcorpus drugs`" in (
        out.replace("\n", " ")
    )


def test_leftover_temporaries_are_reported_then_removed_by_the_rerun(with_drugs):
    root, cfg = with_drugs
    arrow_tmp = root / "merged" / "train.dataset" / ".data-00000-of-00001.arrow.tmp-0badf00d"
    arrow_tmp.write_bytes(b"x" * 1000)
    drug_tmp = root / "drugs" / ".drug_fps.npy.tmp-0badf00d"
    drug_tmp.write_bytes(b"x")
    _fails(
        1, "no foreign files in finished outputs: train.dataset/.data-00000-of-00001.arrow.tmp-0badf00d", "verify", cfg
    )
    assert "already complete" in _ok("tokenize", cfg)
    _ok("drugs", cfg)
    assert not arrow_tmp.exists() and not drug_tmp.exists()
    _ok("verify", cfg)
    mine = root / "merged" / "train.dataset" / ".notes.tmp-mine"  # not a name cellcorpus writes: kept, reported
    mine.write_text("the user's")
    assert "already complete" in _ok("tokenize", cfg)
    assert mine.read_text() == "the user's"
    out = _fails(1, "no foreign files in finished outputs: train.dataset/.notes.tmp-mine", "verify", cfg)
    assert "hint: remove the named file: cellcorpus did not write it" in out


def test_verify_with_drugs_and_a_missing_split_is_a_failure_not_a_traceback(with_drugs):
    root, cfg = with_drugs
    for p in (root / "merged" / "valid.dataset").iterdir():
        p.unlink()
    (root / "merged" / "valid.dataset").rmdir()
    _fails(1, "verify failed: ", "verify", cfg)


# ---- tracebacks that are one-line errors now --------------------------------------------------------------
@pytest.mark.parametrize("command", ["drugs", "run"])
def test_missing_drugs_table_is_named(tmp_path, command):
    random_corpus(tmp_path, n_files=1, n_cells=20, seed=1)
    drugs = {"table": str(tmp_path / "nope.csv"), "output_root": str(tmp_path / "drugs")}
    _fails(2, f"drugs.table: file not found: {tmp_path}/nope.csv", command, config_file(tmp_path, drugs=drugs))
    assert not (tmp_path / "drugs").exists()


@pytest.mark.parametrize("value", ["*weird", "`tick", "@at", "%pct"])
def test_set_value_that_is_not_yaml_is_a_string(tmp_path, value):
    random_corpus(tmp_path, n_files=1, n_cells=20, seed=1)
    _ok("tokenize", config_file(tmp_path), "--set", f"huggingface.dataset_name={value}")
    assert json.loads((tmp_path / "merged" / "manifest.json").read_text())["dataset_name"] == value


def test_set_without_a_value_is_refused(tmp_path):
    _fails(2, "--set huggingface.dataset_name: expected KEY=VALUE", "tokenize", config_file(tmp_path), "--set",
           "huggingface.dataset_name")  # fmt: skip


def test_symbol_keyed_file_with_coverage_check_off_is_noted(tmp_path):
    random_corpus(tmp_path, n_files=1, n_cells=20, seed=1)
    make_h5ad(tmp_path / "raw" / "symbols.h5ad", np.eye(20, 5) * 2, ["TP53", "EGFR", "MYC", "KRAS", "GAPDH"])
    out = _ok("tokenize", config_file(tmp_path, **{"huggingface.min_gene_coverage": 0}))
    assert "symbols.h5ad: no gene id ('gene_id': 'TP53', 'EGFR', 'MYC', 'KRAS') is in the vocabulary, so all" in out


def test_ctrl_c_says_what_was_kept(tmp_path, monkeypatch):
    import cellcorpus.stages.tokenize as tokenize

    random_corpus(tmp_path, n_files=1, n_cells=20, seed=1)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(tokenize, "tokenize_unit", interrupted)
    result = runner.invoke(app, ["tokenize", config_file(tmp_path)])
    assert result.exit_code == 130, result.output
    assert "interrupted: every finished unit is recorded and kept" in result.output
    assert "run the same command again to resume" in result.output


def test_plain_ndarray_mds_columns_run_and_verify(tmp_path):
    """`mds.columns.genes: ndarray` (dtype stored per sample) is accepted by the writer, so verify reads it too."""
    random_corpus(tmp_path, n_files=1, n_cells=50, seed=1)
    out = _ok(
        "run", config_file(tmp_path, **{"mds.columns": {"genes": "ndarray", "expressions": "ndarray", "id": "int64"}})
    )
    assert "verify summary" in out  # exit 0: every check passed (a failed check exits 1)
