"""`--append`: new input files added to a finished corpus. Built in two appends, a corpus holds the cells, splits
and per-cell tokens of one built at once (Arrow and MDS); the finished data files and shards stay byte for byte;
removed or changed inputs are refused by name; an interrupted append resumes as one."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import zstandard
from typer.testing import CliRunner

import cellcorpus.stages.tokenize as tokenize_mod
from cellcorpus.cli import app
from cellcorpus.config import load_config
from cellcorpus.errors import ConfigError
from cellcorpus.formats.mds import decode_value, iter_samples, parse_shard
from cellcorpus.pipeline import run_pipeline
from cellcorpus.stages.mds import run_mds
from cellcorpus.stages.tokenize import run_tokenize
from cellcorpus.stages.verify import run_verify
from tests._utils import GENES, arrow_rows, make_h5ad, write_vocab

N_CELLS = 120
SETTINGS = {
    "huggingface.unit_cells": 50,
    "huggingface.shuffle_bucket_cells": 64,
    "huggingface.obs_metadata_columns": ["drug"],
    "huggingface.fingerprints": True,
    "mds.columns": {"genes": "pkl", "expressions": "pkl", "id": "int64", "drug": "str"},
    "mds.size_limit": 1 << 13,
}


def _write_input(root: Path, name: str, seed: int, drugs: tuple[str, ...] = ("d0", "d1", "d2")) -> None:
    rng = np.random.default_rng(seed)
    m = sp.random(N_CELLS, len(GENES), density=0.5, random_state=rng, format="csr", dtype=np.float32)
    m.data = np.ceil(m.data * 9)
    obs = {"drug": [drugs[i % len(drugs)] for i in range(N_CELLS)]}
    make_h5ad(root / "raw" / name, m, GENES, obs, obs_index=[f"{name}-{i}" for i in range(N_CELLS)])


def _config(root: Path, write_config, shuffle: bool, key: str | list[str] = "id", **overrides):
    write_vocab(root / "vocab" / "vocab.json")
    split = {"test_size": 0.2, "seed": 11, "shuffle": shuffle, "key": key}
    return load_config(write_config(root, **{**SETTINGS, "huggingface.split_parameters": split, **overrides}))


def _cells(root: Path) -> dict[str, dict[int, tuple]]:
    """split -> id -> (genes, expressions, drug), read from the Arrow datasets with pyarrow."""
    return {
        s: {r["id"]: (r["genes"], r["expressions"], r["drug"]) for r in arrow_rows(root / "merged" / f"{s}.dataset")}
        for s in ("train", "valid")
    }


def _mds_cells(root: Path) -> dict[str, dict[int, tuple]]:
    """split -> id -> (genes, expressions), decoded from the MDS shards the merged index.json lists."""
    out: dict[str, dict[int, tuple]] = {}
    for split in ("train", "valid"):
        index = json.loads((root / "mds" / split / "index.json").read_text())
        cells = out.setdefault(split, {})
        for shard in index["shards"]:
            raw = zstandard.ZstdDecompressor().decompress(
                (root / "mds" / split / shard["zip_data"]["basename"]).read_bytes()
            )
            config, offsets = parse_shard(raw)
            for sample in iter_samples(raw, config, offsets):
                cid = int(decode_value("int64", sample["id"]))
                cells[cid] = (
                    decode_value("pkl", sample["genes"]).tolist(),
                    decode_value("pkl", sample["expressions"]).tolist(),
                )
    return out


def _files(root: Path) -> dict[str, bytes]:
    """Every data file and shard of the corpus, by path."""
    found = [*(root / "merged").glob("*.dataset/*.arrow"), *(root / "mds").glob("*/*/shard.*")]
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(found)}


@pytest.mark.parametrize("shuffle, key", [(True, "id"), (False, "id"), (True, ["index"])])
def test_two_appends_equal_one_build_and_leave_finished_files_untouched(tmp_path, write_config, shuffle, key):
    at_once, grown = tmp_path / "at_once", tmp_path / "grown"
    for k in range(4):
        _write_input(at_once, f"plate{k}.h5ad", seed=k)
    run_pipeline(_config(at_once, write_config, shuffle, key))

    cfg = _config(grown, write_config, shuffle, key)
    for k in range(2):
        _write_input(grown, f"plate{k}.h5ad", seed=k)
    run_pipeline(cfg)
    first = _files(grown)
    for k in (2, 3):  # one more plate per append
        _write_input(grown, f"plate{k}.h5ad", seed=k)
        summaries = {s.stage: s for s in run_pipeline(cfg, append=True)}
        assert any("appended 1 input file(s)" in n for n in summaries["tokenize"].notes)
    after = _files(grown)
    assert {k: after[k] for k in first} == first  # finished data files and shards: byte for byte
    assert len(after) > len(first)

    assert _cells(grown) == _cells(at_once)  # the same cells, in the same splits, with the same tokens
    assert _mds_cells(grown) == _mds_cells(at_once)
    manifest = json.loads((grown / "merged" / "manifest.json").read_text())
    assert manifest["totals"] == json.loads((at_once / "merged" / "manifest.json").read_text())["totals"]
    assert [a["inputs"] for a in manifest["appends"]] == [["plate2.h5ad"], ["plate3.h5ad"]]
    assert [i["file_index"] for i in manifest["inputs"]] == [0, 1, 2, 3]
    assert manifest["totals"]["cells_read"] == 4 * N_CELLS
    assert len(manifest["fingerprints"]) == len(
        json.loads((at_once / "merged" / "manifest.json").read_text())["fingerprints"]
    )
    assert not (grown / "merged" / "append.json").exists()
    run_verify(cfg)  # covers every file, old and new (raises otherwise)
    # the appended corpus is this input set's finished corpus: a plain rerun skips every stage that builds
    assert {s.stage: s.skipped for s in run_pipeline(cfg)}["tokenize"] is True


def test_new_files_sorting_first_keep_the_finished_numbering(tmp_path, write_config):
    cfg = _config(tmp_path, write_config, shuffle=False)
    _write_input(tmp_path, "b.h5ad", seed=1)
    run_pipeline(cfg)
    before = _cells(tmp_path)
    _write_input(tmp_path, "a.h5ad", seed=2)  # sorts before b: a rebuild would renumber b's cells
    run_pipeline(cfg, append=True)
    after = _cells(tmp_path)
    for split in before:  # b's cells keep their ids, hence their split (key: id)
        assert {i: c for i, c in after[split].items() if i >> 32 == 0} == before[split]
    manifest = json.loads((tmp_path / "merged" / "manifest.json").read_text())
    assert [(i["file_index"], i["path"]) for i in manifest["inputs"]] == [(0, "b.h5ad"), (1, "a.h5ad")]
    run_verify(cfg)
    assert {s.stage: s.skipped for s in run_pipeline(cfg)}["tokenize"] is True


def test_removed_or_changed_inputs_are_refused_by_name(tmp_path, write_config):
    cfg = _config(tmp_path, write_config, shuffle=True)
    for k in range(3):
        _write_input(tmp_path, f"plate{k}.h5ad", seed=k)
    run_pipeline(cfg)
    before = _files(tmp_path)
    _write_input(tmp_path, "plate3.h5ad", seed=3)
    (tmp_path / "raw" / "plate0.h5ad").unlink()
    _write_input(tmp_path, "plate1.h5ad", seed=99)
    with pytest.raises(ConfigError, match=r"removed: plate0\.h5ad; changed: plate1\.h5ad") as exc:
        run_pipeline(cfg, append=True)
    assert "without --append" in exc.value.hint
    assert _files(tmp_path) == before  # nothing touched
    result = CliRunner().invoke(app, ["run", str(tmp_path / "config.yaml"), "--append"])
    assert result.exit_code != 0 and "removed: plate0.h5ad" in result.output


def test_an_interrupted_append_resumes_as_an_append(tmp_path, write_config, monkeypatch):
    cfg = _config(tmp_path, write_config, shuffle=True)
    for k in range(2):
        _write_input(tmp_path, f"plate{k}.h5ad", seed=k)
    run_pipeline(cfg)
    first = _files(tmp_path)
    _write_input(tmp_path, "plate2.h5ad", seed=2)
    real = tokenize_mod.finalize_splits

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # after every new unit ran, before any data file was written

    monkeypatch.setattr(tokenize_mod, "finalize_splits", killed)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(cfg, append=True)
    assert json.loads((tmp_path / "merged" / "append.json").read_text())["inputs"] == ["plate2.h5ad"]
    assert not (tmp_path / "merged" / "train.dataset" / "state.json").exists()  # not complete meanwhile
    monkeypatch.setattr(tokenize_mod, "finalize_splits", real)
    run_pipeline(cfg, append=True)
    after = _files(tmp_path)
    assert {k: after[k] for k in first} == first
    assert json.loads((tmp_path / "merged" / "manifest.json").read_text())["totals"]["cells_read"] == 3 * N_CELLS
    run_verify(cfg)


def test_a_group_split_keeps_finished_groups_where_they_are(tmp_path, write_config):
    cfg = _config(tmp_path, write_config, shuffle=False, **{"huggingface.split_parameters.by": "drug"})
    drugs = tuple(f"d{i}" for i in range(10))
    _write_input(tmp_path, "plate0.h5ad", seed=0, drugs=drugs)
    run_pipeline(cfg)
    held = set(json.loads((tmp_path / "merged" / "manifest.json").read_text())["held_out_groups"])
    assert held and held < set(drugs)
    fresh = tuple(f"n{i}" for i in range(10))
    _write_input(tmp_path, "plate1.h5ad", seed=1, drugs=drugs + fresh)  # the old groups again, and new ones
    run_pipeline(cfg, append=True)
    manifest = json.loads((tmp_path / "merged" / "manifest.json").read_text())
    now = set(manifest["held_out_groups"])
    assert now & set(drugs) == held  # a finished group stays where it was, new cells of it follow it
    assert now - held and now - held < set(fresh)  # new groups chosen among themselves
    cells = _cells(tmp_path)
    assert {c[2] for c in cells["valid"].values()} == now
    assert not {c[2] for c in cells["train"].values()} & now
    run_verify(cfg)


def test_without_append_grown_inputs_rebuild_everything_and_leave_no_stale_file(tmp_path, write_config, caplog):
    cfg = _config(tmp_path, write_config, shuffle=False)
    for k in range(2):
        _write_input(tmp_path, f"plate{k}.h5ad", seed=k)
    run_pipeline(cfg)
    _write_input(tmp_path, "plate2.h5ad", seed=2)
    run_pipeline(cfg, append=True)
    appended = sorted(p.name for p in (tmp_path / "merged" / "train.dataset").glob("data-append001-*"))
    assert appended
    shutil.rmtree(tmp_path / "raw")  # now a smaller input set, without --append: a rebuild of every cell
    for k in range(2):
        _write_input(tmp_path, f"plate{k}.h5ad", seed=k + 10)
    _write_input(tmp_path, "plate2.h5ad", seed=2)
    _write_input(tmp_path, "plate3.h5ad", seed=3)
    with caplog.at_level("WARNING"):
        run_pipeline(cfg)
    assert not list((tmp_path / "merged" / "train.dataset").glob("data-append001-*"))  # the earlier append's files
    assert "appends" not in json.loads((tmp_path / "merged" / "manifest.json").read_text())
    run_verify(cfg)  # no file the manifest does not list
    _write_input(tmp_path, "plate4.h5ad", seed=4)
    with caplog.at_level("WARNING"):
        run_pipeline(cfg)
    assert "--append` would tokenize only the new files" in caplog.text


def test_a_rebuild_after_an_interrupted_append_or_with_fewer_files_leaves_no_stale_file(
    tmp_path, write_config, monkeypatch
):
    """Without --append: an append left unfinished is rebuilt as a whole, and its data files and MDS writer
    folders go with the finished build's that the rebuild does not write; verify finds nothing unlisted."""
    cfg = _config(tmp_path, write_config, shuffle=False)
    for k in range(3):
        _write_input(tmp_path, f"plate{k}.h5ad", seed=k)
    run_pipeline(cfg)
    _write_input(tmp_path, "plate3.h5ad", seed=3)
    real = tokenize_mod.publish_fingerprints

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # after the appended data files were written, before the manifest

    monkeypatch.setattr(tokenize_mod, "publish_fingerprints", killed)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(cfg, append=True)
    monkeypatch.setattr(tokenize_mod, "publish_fingerprints", real)
    assert list((tmp_path / "merged" / "train.dataset").glob("data-append001-*"))
    (tmp_path / "raw" / "plate3.h5ad").unlink()
    (tmp_path / "raw" / "plate2.h5ad").unlink()  # fewer files than the finished build: fewer data files
    run_pipeline(cfg)  # a rebuild, verify included: it raises on any file no record names
    assert not list((tmp_path / "merged" / "train.dataset").glob("data-append*"))
    assert not (tmp_path / "merged" / "append.json").exists()
    written = json.loads((tmp_path / "merged" / "manifest.json").read_text())["splits"]["train"]
    assert sorted(p.name for p in (tmp_path / "merged" / "train.dataset").glob("*.arrow")) == sorted(
        r["path"] for r in written
    )
    index = json.loads((tmp_path / "mds" / "train" / "index.json").read_text())
    folders = {s["zip_data"]["basename"].split("/")[0] for s in index["shards"]}
    assert {p.name for p in (tmp_path / "mds" / "train").iterdir() if p.is_dir()} == folders


def test_a_geneformer_corpus_appends_and_its_lengths_file_covers_every_cell(tmp_path, write_config):
    """The model's own files (Geneformer's `<split>_lengths.pkl`) are written again from every data file, locally
    and under a URL (where the finished data files are read back from the store: they were never local here)."""
    import pickle

    import fsspec

    from tests.encodings.test_seam import _geneformer

    cfg, m = _geneformer(tmp_path, write_config)
    run_pipeline(cfg)
    make_h5ad(tmp_path / "raw" / "b.h5ad", m[::-1], GENES)
    run_pipeline(cfg, append=True)  # verify included: the lengths file's checksum too
    train = arrow_rows(tmp_path / "merged" / "train.dataset")
    lengths = pickle.loads((tmp_path / "merged" / "train_lengths.pkl").read_bytes())
    assert lengths == [r["length"] for r in train] and len(train) > m.shape[0]

    remote = tmp_path / "remote"
    (remote / "raw").mkdir(parents=True)
    shutil.copytree(tmp_path / "vocab", remote / "vocab")
    shutil.copy(tmp_path / "raw" / "a.h5ad", remote / "raw" / "a.h5ad")
    url = f"memory://{tmp_path.name}-gf"
    settings = {
        "huggingface.encoding": "geneformer",
        "huggingface.geneformer": {"gene_median": str(tmp_path / "median.pkl"), "model_input_size": 5},
        "huggingface.merged_dataset_root": f"{url}/merged",
    }
    at_url = load_config(write_config(remote, **settings, drop=("mds",)))
    run_pipeline(at_url)  # (the lengths file used to be read from the local copies, gone once uploaded)
    shutil.copy(tmp_path / "raw" / "b.h5ad", remote / "raw" / "b.h5ad")
    run_pipeline(at_url, append=True)
    fs, _ = fsspec.core.url_to_fs(url)
    assert pickle.loads(fs.cat_file(f"{url}/merged/train_lengths.pkl")) == lengths  # the same cells, the same order
    fs.rm(url, recursive=True)


def test_a_rebuild_with_fewer_files_then_more_again_redoes_the_removed_writers(tmp_path, write_config):
    """The MDS writer folders a shrinking rebuild removes lose their completion records too: when the same data
    file comes back, its writer is redone, not taken as done (its folder is gone)."""
    cfg = _config(tmp_path, write_config, shuffle=False)
    for k in range(3):
        _write_input(tmp_path, f"plate{k}.h5ad", seed=k)
    run_pipeline(cfg)
    kept = tmp_path / "plate2.h5ad"
    shutil.move(tmp_path / "raw" / "plate2.h5ad", kept)
    run_pipeline(cfg)  # fewer data files: the last writer folders go (verify included)
    shutil.move(kept, tmp_path / "raw" / "plate2.h5ad")
    run_tokenize(cfg)  # the same files as the first build; the mds stage alone converts them (no fused pass)
    run_mds(cfg)
    run_verify(cfg)
    assert _mds_cells(tmp_path) == {s: {i: c[:2] for i, c in rows.items()} for s, rows in _cells(tmp_path).items()}
