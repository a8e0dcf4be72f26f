"""Nothing deleted that is not ours (issue 20 item 3): folders a config points at may hold a user's files.

Each case runs the CLI on a folder that already holds `keep.txt` where cellcorpus would write or clean, and
asserts the exit code, the message naming the folder, and that every file of the user's is still there.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from typer.testing import CliRunner

from cellcorpus.cli import app
from cellcorpus.io.owned import OWNER_MARK
from tests._utils import base_config, config_file, random_corpus

runner = CliRunner()


def _plant(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    keep = folder / "keep.txt"
    keep.write_text("the user's")
    return keep


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_scratch_folders_of_a_user_project_are_refused_not_cleaned(tmp_path):
    random_corpus(tmp_path, n_cells=60, seed=1)
    proj = tmp_path / "proj"
    keeps = [_plant(proj / "parts"), _plant(proj / "units")]
    before = _files(proj)
    result = runner.invoke(app, ["tokenize", config_file(tmp_path, **{"huggingface.output_root": str(proj)})])
    assert result.exit_code == 2, result.output
    assert "huggingface.output_root (parts/): " in result.output and "did not write (keep.txt)" in result.output
    assert _files(proj) == before and all(k.read_text() == "the user's" for k in keeps)
    assert not (tmp_path / "merged" / "train.dataset").exists()


def test_empty_scratch_folders_are_adopted_and_removed_after_the_run(tmp_path):
    random_corpus(tmp_path, n_cells=60, seed=1)
    proj = tmp_path / "proj"
    (proj / "parts").mkdir(parents=True)
    keep = _plant(proj)  # beside the scratch folders, never touched
    result = runner.invoke(app, ["tokenize", config_file(tmp_path, **{"huggingface.output_root": str(proj)})])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in proj.iterdir()) == ["keep.txt"] and keep.read_text() == "the user's"


def test_mds_writer_folders_of_someone_else_are_refused(tmp_path):
    random_corpus(tmp_path, n_cells=60, seed=1)
    cfg = config_file(tmp_path)
    assert runner.invoke(app, ["tokenize", cfg]).exit_code == 0
    keep = _plant(tmp_path / "mds" / "train" / "00000")
    result = runner.invoke(app, ["mds", cfg])
    assert result.exit_code == 2, result.output
    assert "mds.out_root: " in result.output and "did not write (train)" in result.output
    assert keep.read_text() == "the user's" and not (tmp_path / "mds" / OWNER_MARK).exists()


def test_split_name_with_dotdot_is_refused_before_anything_is_removed(tmp_path):
    random_corpus(tmp_path, n_cells=60, seed=1)
    escape = tmp_path / "mds" / "escape"
    planted = _plant(escape / ".fused-0123456789abcdef")
    result = runner.invoke(app, ["run", config_file(tmp_path, **{"mds.splits": ["train", "../escape"]})])
    assert result.exit_code == 2, result.output
    assert "mds.splits.1: Value error, must be a plain file or folder name (no '/', no '..')" in result.output
    assert planted.read_text() == "the user's"


def test_other_path_components_are_plain_names(tmp_path):
    for key in ("vocab.output_file", "drugs.drug_to_id_file", "drugs.fingerprints_file", "tahoe.data_dir"):
        section = key.split(".")[0]
        extra = {
            "vocab": {"reference_adata": "r.h5ad", "output_root": str(tmp_path)},
            "drugs": {"table": "t.csv", "output_root": str(tmp_path)},
            "tahoe": {"url": "file:///x", "output_root": str(tmp_path)},
        }[section]
        cfg = base_config(tmp_path)
        cfg[section] = {**extra, key.split(".")[1]: "../../outside"}
        path = tmp_path / "c.yaml"
        path.write_text(yaml.safe_dump(cfg))
        result = runner.invoke(app, ["tokenize", str(path)])
        assert result.exit_code == 2 and f"{key}: Value error, must be a plain" in result.output, result.output
