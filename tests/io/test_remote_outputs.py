"""Output roots as fsspec URLs (memory:// in-process, file:// across processes), including resume."""

from __future__ import annotations

import fsspec
import pytest

from cellcorpus.config import load_config
from cellcorpus.errors import UnitFailed
from cellcorpus.io.owned import OWNER_MARK
from cellcorpus.stages import mds as mds_stage
from cellcorpus.stages.mds import run_mds
from cellcorpus.stages.tokenize import run_tokenize
from cellcorpus.stages.verify import run_verify
from tests._utils import random_corpus, write_vocab

SETTINGS = {
    "huggingface.unit_cells": 100,
    "huggingface.obs_metadata_columns": ["drug"],
    "mds.size_limit": 1 << 12,
    "mds.columns": {"genes": "pkl", "expressions": "pkl", "id": "int64", "drug": "str"},
}


def _inputs(root):
    random_corpus(root, seed=2, n_drugs=3)


def _tree(url: str) -> dict[str, bytes]:
    fs, root = fsspec.core.url_to_fs(url)
    out = {}
    for p in fs.find(root):
        rel = p[len(root) :].lstrip("/")
        if rel.endswith("manifest.json") or rel.startswith((".units", OWNER_MARK)):  # records, not data
            continue
        out[rel] = fs.cat_file(p)
    return out


def _local_run(tmp_path, write_config, shuffle):
    root = tmp_path / "local"
    _inputs(root)
    split = {"test_size": 0.2, "seed": 1, "shuffle": shuffle}
    cfg = load_config(write_config(root, **SETTINGS, **{"huggingface.split_parameters": split}))
    run_tokenize(cfg)
    run_mds(cfg)
    return _tree(str(root / "merged")), _tree(str(root / "mds"))


def _remote_config(root, base: str, write_config, num_proc: int, shuffle: bool, **overrides):
    """The test corpus under `root`, its dataset and MDS roots under the URL `base`."""
    _inputs(root)
    settings = {
        "huggingface.split_parameters": {"test_size": 0.2, "seed": 1, "shuffle": shuffle},
        "huggingface.merged_dataset_root": f"{base}/merged",
        "huggingface.num_proc": num_proc,
        "mds.root_dir": f"{base}/merged",
        "mds.out_root": f"{base}/mds",
        "mds.staging_dir": str(root / "mds_staging"),
        **overrides,
    }
    return load_config(write_config(root, **SETTINGS, **settings))


@pytest.mark.parametrize("scheme, num_proc, shuffle", [("memory", 1, True), ("file", 2, False)])
def test_remote_roots_end_to_end_with_resume(tmp_path, write_config, monkeypatch, scheme, num_proc, shuffle):
    want_hf, want_mds = _local_run(tmp_path, write_config, shuffle)
    root = tmp_path / "remote"
    base = f"memory://{tmp_path.name}" if scheme == "memory" else f"file://{tmp_path}/bucket"
    cfg = _remote_config(root, base, write_config, num_proc, shuffle, **{"mds.num_proc": 1})
    run_tokenize(cfg)
    fs, _ = fsspec.core.url_to_fs(base)
    assert fs.exists(f"{base}/merged/train.dataset/state.json")
    assert not list((root / "work" / "staging").rglob("*.arrow"))  # uploaded, not kept locally
    # MDS with an interruption after the first unit: no merged index yet, rerun resumes
    real = mds_stage.mds_unit
    seen = []

    def crash_second(unit, ctx):
        seen.append(unit.unit_id)
        if len(seen) == 2:
            raise RuntimeError("killed")
        return real(unit, ctx)

    monkeypatch.setattr(mds_stage, "mds_unit", crash_second)
    with pytest.raises(UnitFailed, match="killed"):
        run_mds(cfg)
    assert not fs.exists(f"{base}/mds/train/index.json")
    monkeypatch.setattr(mds_stage, "mds_unit", real)
    run_mds(cfg)
    assert _tree(f"{base}/merged") == want_hf
    assert _tree(f"{base}/mds") == want_mds
    run_verify(cfg)
    assert run_tokenize(cfg).skipped and run_mds(cfg).skipped
    if scheme == "memory":
        fs.rm(f"memory://{tmp_path.name}", recursive=True)


def test_inputs_from_a_url(tmp_path, write_config):
    """adata_dir as an fsspec URL: same cells as the same files read from disk."""

    from tests._utils import arrow_rows

    local = tmp_path / "local"
    _inputs(local)
    cfg = load_config(write_config(local, **SETTINGS))
    run_tokenize(cfg)
    remote_root = tmp_path / "remote"
    write_vocab(remote_root / "vocab" / "vocab.json")
    fs = fsspec.filesystem("memory")
    for p in sorted((local / "raw").glob("*.h5ad")):
        fs.put_file(str(p), f"/{tmp_path.name}-in/raw/{p.name}")
    cfg2 = load_config(
        write_config(remote_root, **SETTINGS, **{"huggingface.adata_dir": f"memory://{tmp_path.name}-in/raw"})
    )
    run_tokenize(cfg2)
    for split in ("train", "valid"):
        a = arrow_rows(local / "merged" / f"{split}.dataset")
        b = arrow_rows(remote_root / "merged" / f"{split}.dataset")
        assert a == b and len(a) > 0
    fs.rm(f"/{tmp_path.name}-in", recursive=True)


@pytest.mark.parametrize("scheme, num_proc, shuffle", [("memory", 1, True), ("file", 2, True), ("file", 2, False)])
def test_remote_roots_fused_run_matches_local(tmp_path, write_config, scheme, num_proc, shuffle):
    """`run` writes the MDS export in the Arrow pass (shuffled: uploaded by the shuffle units; unshuffled with
    a remote export: left to the mds stage): the same bytes as the two stages on local folders."""
    from cellcorpus.pipeline import run_pipeline

    want_hf, want_mds = _local_run(tmp_path, write_config, shuffle)
    root = tmp_path / "remote"
    base = f"memory://{tmp_path.name}-fused" if scheme == "memory" else f"file://{tmp_path}/bucket"
    cfg = _remote_config(root, base, write_config, num_proc, shuffle)
    summaries = {s.stage: s for s in run_pipeline(cfg)}
    assert not summaries["mds"].skipped
    assert {k: v for k, v in _tree(f"{base}/merged").items() if not k.startswith("report/")} == want_hf
    assert _tree(f"{base}/mds") == want_mds
    staged = [p for p in (root / "mds_staging").rglob("*") if p.is_file() and ".units" not in p.parts]
    assert [p.name for p in staged] == [OWNER_MARK]  # every shard and index uploaded (records stay in staging)
    if scheme == "memory":
        fsspec.filesystem("memory").rm(f"/{tmp_path.name}-fused", recursive=True)


@pytest.mark.parametrize("scheme, shuffle", [("memory", True), ("file", False)])
def test_append_to_a_remote_corpus(tmp_path, write_config, scheme, shuffle):
    """`--append` with the datasets and MDS shards under a URL: the finished remote files stay, the new ones are
    uploaded beside them, the merged state.json / index.json / manifest cover both, and verify passes."""
    import shutil

    from cellcorpus.plan import plan_for

    root = tmp_path / "remote"
    base = f"memory://{tmp_path.name}-append" if scheme == "memory" else f"file://{tmp_path}/bucket"
    cfg = _remote_config(root, base, write_config, 1, shuffle, **{"mds.num_proc": 1})
    extra = root / "f1.h5ad"
    shutil.move(root / "raw" / "f1.h5ad", extra)  # the first build holds f0 only
    run_tokenize(cfg)
    run_mds(cfg)
    finished = {**_tree(f"{base}/merged"), **{f"mds/{k}": v for k, v in _tree(f"{base}/mds").items()}}
    shutil.move(extra, root / "raw" / "f1.h5ad")
    appended = run_tokenize(plan_for(cfg, "tokenize", append=True))
    assert any("appended 1 input file(s)" in n for n in appended.notes)
    run_mds(plan_for(cfg, "mds", append=True))
    now = {**_tree(f"{base}/merged"), **{f"mds/{k}": v for k, v in _tree(f"{base}/mds").items()}}
    kept = {k: v for k, v in finished.items() if not k.endswith(("state.json", "index.json", "dataset_info.json"))}
    assert {k: now[k] for k in kept} == kept  # every finished data file and shard, byte for byte
    assert len(now) > len(finished)
    run_verify(cfg)  # raises on any failed check
    fs, _ = fsspec.core.url_to_fs(base)
    assert not fs.exists(f"{base}/merged/append.json")
    if scheme == "memory":
        fs.rm(f"memory://{tmp_path.name}-append", recursive=True)
