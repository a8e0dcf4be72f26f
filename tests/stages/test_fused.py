"""`cellcorpus run` writes the MDS export in tokenize's shuffle pass: same bytes as the two stages apart."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import cellcorpus.stages.mds as mds_stage
import cellcorpus.stages.mds_unit as mds_unit_mod
import cellcorpus.stages.tokenize_finalize as finalize_mod
from cellcorpus.config import load_config
from cellcorpus.errors import ConfigError
from cellcorpus.pipeline import run_pipeline
from cellcorpus.stages.mds import run_mds
from cellcorpus.stages.tokenize import run_tokenize
from cellcorpus.stages.verify import run_verify
from tests._utils import output_digests, random_corpus

SETTINGS = {
    "huggingface.unit_cells": 128,
    "huggingface.shuffle_bucket_cells": 64,
    "huggingface.obs_metadata_columns": ["drug"],
    "huggingface.split_parameters": {"test_size": 0.2, "seed": 7, "shuffle": True},
    "mds.columns": {"genes": "pkl", "expressions": "pkl", "id": "int64", "drug": "str"},
    "mds.min_length": 4,  # of 1 (cls) + up to 5 genes: drops some cells, keeps most
    "mds.size_limit": 1 << 14,
}


def _config(root: Path, write_config, shuffle: bool = True, **overrides):
    random_corpus(root, n_cells=300, seed=3, n_drugs=4)
    split = {"test_size": 0.2, "seed": 7, "shuffle": shuffle}
    return load_config(write_config(root, **{**SETTINGS, "huggingface.split_parameters": split, **overrides}))


def _run(cfg) -> dict[str, dict]:
    return {s.stage: s.counts for s in run_pipeline(cfg) if s.stage in ("tokenize", "mds")}


def _no_mds_units(monkeypatch) -> None:
    def fail(unit, ctx):
        raise AssertionError(f"mds unit {unit.unit_id} ran: the shuffle pass should have written it")

    monkeypatch.setattr(mds_stage, "mds_unit", fail)


@pytest.mark.parametrize("shuffle, num_proc", [(True, 1), (False, 1), (False, 2)])
def test_run_writes_mds_in_the_arrow_pass_byte_identical_to_separate_stages(
    tmp_path, write_config, monkeypatch, shuffle, num_proc
):
    apart = _config(tmp_path / "apart", write_config, shuffle)
    run_tokenize(apart)
    apart_counts = run_mds(apart).counts

    fused = _config(tmp_path / "fused", write_config, shuffle, **{"huggingface.num_proc": num_proc})
    with monkeypatch.context() as m:
        _no_mds_units(m)  # the mds stage runs in this process: none of its units may run
        counts = _run(fused)
    assert counts["mds"] == apart_counts
    assert counts["mds"]["train_dropped_min_length"] > 0  # min_length applied in the fused pass too
    assert output_digests(tmp_path / "fused") == output_digests(tmp_path / "apart")
    run_verify(fused)
    assert not list((tmp_path / "fused" / "mds").glob("*/.fused-*"))  # no scratch left in the export
    # the mds manifest says what the standalone stage says, shard by shard
    manifests = [json.loads((tmp_path / d / "mds" / "manifest.json").read_text()) for d in ("apart", "fused")]
    assert manifests[0]["splits"] == manifests[1]["splits"]


def test_fused_run_interrupted_resumes_to_the_same_bytes(tmp_path, write_config, monkeypatch):
    clean = _config(tmp_path / "clean", write_config)
    _run(clean)
    cfg = _config(tmp_path / "crash", write_config)
    real = finalize_mod.write_stream
    calls = []

    def crash_on_third(path, table, **kwargs):
        calls.append(path)
        if len(calls) == 3:
            raise OSError("disk went away")
        return real(path, table, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(finalize_mod, "write_stream", crash_on_third)
        with pytest.raises(Exception, match="disk went away"):
            _run(cfg)
    mds_root = tmp_path / "crash" / "mds"
    assert not (mds_root / "train" / "index.json").exists()  # nothing half-written looks complete
    kept = len(list((mds_root / ".units").glob("train-*.json")))  # finished buckets are kept, the rest redone
    assert 1 <= kept < len(list((tmp_path / "clean" / "mds" / "train").glob("0*")))
    with monkeypatch.context() as m:
        _no_mds_units(m)
        _run(cfg)
    assert output_digests(tmp_path / "crash") == output_digests(tmp_path / "clean")


def test_fused_run_refuses_a_finished_export_of_other_settings_before_tokenizing(tmp_path, write_config):
    cfg = _config(tmp_path, write_config)
    _run(cfg)
    before = output_digests(tmp_path)
    other_root = tmp_path / "other"  # another corpus whose export would land on the finished one
    other = _config(other_root, write_config, **{"mds.size_limit": 1 << 15, "mds.out_root": str(tmp_path / "mds")})
    with pytest.raises(ConfigError, match="mds.out_root: .* finished MDS export made with other settings"):
        _run(other)
    assert not list((other_root / "merged").glob("*"))  # refused before the first tokenize unit (or folder)
    assert not (other_root / "work" / "parts").exists()
    assert output_digests(tmp_path) == before


def test_rerun_after_fused_run_is_complete_and_standalone_mds_still_works(tmp_path, write_config):
    cfg = _config(tmp_path, write_config)
    _run(cfg)
    summaries = list(run_pipeline(cfg))
    assert all(s.skipped for s in summaries if s.stage in ("tokenize", "mds"))
    # the standalone stage, from the Arrow datasets alone, writes the same export elsewhere
    standalone = cfg.model_copy(update={"mds": cfg.mds.model_copy(update={"out_root": str(tmp_path / "mds2")})})
    run_mds(standalone)
    fused = {k: v for k, v in output_digests(tmp_path).items() if k.startswith("mds/")}
    again = {k.replace("mds2/", "mds/", 1): v for k, v in output_digests(tmp_path).items() if k.startswith("mds2/")}
    assert fused == again


def test_unshuffled_fused_run_interrupted_while_adopting_resumes_to_the_same_bytes(tmp_path, write_config, monkeypatch):
    clean = _config(tmp_path / "clean", write_config, shuffle=False)
    _run(clean)
    cfg = _config(tmp_path / "crash", write_config, shuffle=False)
    real = mds_unit_mod.FusedMds.adopt
    calls = []

    def crash_on_second(self, *args):
        calls.append(args)
        if len(calls) == 2:
            raise OSError("killed")
        return real(self, *args)

    with monkeypatch.context() as m:
        m.setattr(mds_unit_mod.FusedMds, "adopt", crash_on_second)
        with pytest.raises(OSError, match="killed"):
            _run(cfg)
    assert not (tmp_path / "crash" / "mds" / "train" / "index.json").exists()
    _run(cfg)  # the adopted writer is kept, the rest adopted now or converted by the mds stage
    assert output_digests(tmp_path / "crash") == output_digests(tmp_path / "clean")
    assert not list((tmp_path / "crash" / "mds").glob("*/.fused-*"))


def test_mds_root_spelled_relative_still_fuses(tmp_path, write_config, monkeypatch):
    """`mds.root_dir: merged/` from the output folder is the same dataset as the absolute merged_dataset_root."""
    cfg = _config(tmp_path, write_config, **{"mds.root_dir": "merged/"})
    monkeypatch.chdir(tmp_path)
    _no_mds_units(monkeypatch)
    counts = _run(cfg)
    assert counts["mds"]["train_written"] > 0
