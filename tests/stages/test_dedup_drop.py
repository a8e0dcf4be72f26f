"""`dedup: {policy: drop}`: the build that finds duplicate cells leaves them out. Planted duplicates (another
file, CSC, reversed gene order, explicit zeros) are dropped, each group's first cell by id kept; scaled copies
and distinct cells are kept; the corpus equals the two-build route (`cellcorpus dedup`, then `drop_ids`), in Arrow
and MDS, shuffled or not; an append drops new cells equal to finished ones."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from cellcorpus.config import load_config
from cellcorpus.errors import ConfigError
from cellcorpus.pipeline import run_pipeline
from cellcorpus.stages.dedup import run_dedup
from cellcorpus.stages.verify import run_verify
from tests._utils import arrow_rows, config_file
from tests.stages.test_append import _mds_cells
from tests.stages.test_dedup import planted, write_c

MDS = {"mds.columns": {"genes": "pkl", "expressions": "pkl", "id": "int64"}, "huggingface.unit_cells": 16}


def _rows(root: Path) -> dict[str, dict[int, tuple]]:
    return {
        s: {r["id"]: (r["genes"], r["expressions"]) for r in arrow_rows(root / "merged" / f"{s}.dataset")}
        for s in ("train", "valid")
    }


@pytest.mark.parametrize("shuffle", [False, True])
def test_drop_leaves_out_every_planted_copy_and_equals_the_two_build_route(tmp_path, shuffle):
    split = {"huggingface.split_parameters": {"test_size": 0.3, "seed": 5, "shuffle": shuffle}, **MDS}
    one = tmp_path / "one"
    planted(one)
    cfg = load_config(config_file(one, **split, **{"dedup.policy": "drop"}))
    assert cfg.huggingface.fingerprints  # a dedup section records them
    summaries = {s.stage: s for s in run_pipeline(cfg)}  # tokenize, mds, verify, dedup, report
    assert summaries["tokenize"].counts["filtered_duplicates"] == 16
    assert summaries["dedup"].counts["duplicate cells"] == 0  # the corpus holds each cell once

    manifest = json.loads((one / "merged" / "manifest.json").read_text())
    assert manifest["totals"]["written_train"] + manifest["totals"]["written_valid"] == 70 - 16
    found = manifest["duplicates_dropped"]
    assert (found["cells"], found["groups"]) == (16, 16)
    assert {(p["input"], p["other_input"]): p["cells"] for p in found["pairs"]} == {
        ("a.h5ad", "b.h5ad"): 10,
        ("a.h5ad", "c.h5ad"): 5,
        ("a.h5ad", "a.h5ad"): 1,
    }
    kept = {i for split_rows in _rows(one).values() for i in split_rows}
    assert {i & 0xFFFFFFFF for i in kept if i >> 32 == 0} == set(range(39))  # a: all but its copy of row 20
    assert not [i for i in kept if i >> 32 == 1]  # b held only copies
    assert sorted(i & 0xFFFFFFFF for i in kept if i >> 32 == 2) == list(range(5, 20))  # c: doubled + new kept
    assert {s: set(c) for s, c in _mds_cells(one).items()} == {s: set(c) for s, c in _rows(one).items()}
    page = (one / "merged" / "report" / "report.html").read_text()
    assert "dropped: duplicates" in page

    two = tmp_path / "two"  # the two-build route: report, then drop the listed ids in a rebuild
    for name in ("raw", "vocab"):
        shutil.copytree(one / name, two / name)
    first = load_config(config_file(two, **split, **{"huggingface.fingerprints": True}))
    run_pipeline(first)
    listed = str(shutil.copy(two / "merged" / run_dedup(first).id_lists["duplicates"], tmp_path / "dups.npz"))
    shutil.rmtree(two / "merged")
    shutil.rmtree(two / "mds")
    run_pipeline(load_config(config_file(two, **split, **{"huggingface.drop_ids": [listed]})))
    assert _rows(two) == _rows(one)  # the same cells, splits and tokens


def test_an_append_drops_new_cells_equal_to_finished_ones(tmp_path):
    a = planted(tmp_path, with_c=False)
    cfg = load_config(config_file(tmp_path, **MDS, **{"dedup.policy": "drop"}))
    run_pipeline(cfg)
    before = _rows(tmp_path)
    write_c(tmp_path, a)
    tokenize = {s.stage: s for s in run_pipeline(cfg, append=True)}["tokenize"]
    assert tokenize.counts["filtered_duplicates"] == 5  # c's copies of a's rows 10-14
    after = _rows(tmp_path)
    for split, rows in before.items():
        assert {i: r for i, r in after[split].items() if i >> 32 < 2} == rows  # finished cells as they were
    assert sorted(i & 0xFFFFFFFF for s in after.values() for i in s if i >> 32 == 2) == list(range(5, 20))
    manifest = json.loads((tmp_path / "merged" / "manifest.json").read_text())
    assert manifest["duplicates_dropped"]["cells"] == 11 + 5  # the first build's and the append's
    assert manifest["totals"]["filtered_duplicates"] == 16
    run_verify(cfg)


def test_dedup_with_fingerprints_off_is_refused(tmp_path):
    planted(tmp_path, with_c=False)
    path = config_file(tmp_path, **{"dedup.policy": "drop", "huggingface.fingerprints": False})
    with pytest.raises(ConfigError, match=r"dedup: needs huggingface.fingerprints \(set to false\)"):
        load_config(path)


@pytest.mark.parametrize("shuffle", [False, True])
def test_an_interrupted_finalize_resumes_to_the_same_bytes(tmp_path, monkeypatch, shuffle):
    import cellcorpus.stages.tokenize_finalize as finalize_mod
    from tests._utils import output_digests

    split = {"huggingface.split_parameters": {"test_size": 0.3, "seed": 5, "shuffle": shuffle}, **MDS}
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    for root in (whole, killed):
        planted(root)
    run_pipeline(load_config(config_file(whole, **split, **{"dedup.policy": "drop"})))
    cfg = load_config(config_file(killed, **split, **{"dedup.policy": "drop"}))
    name = "shuffle_unit" if shuffle else "_without_dropped"
    real, calls = getattr(finalize_mod, name), []

    def once_then_kill(*args, **kwargs):
        if calls:
            raise KeyboardInterrupt
        calls.append(1)
        return real(*args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(finalize_mod, name, once_then_kill)
        with pytest.raises(KeyboardInterrupt):
            run_pipeline(cfg)
    run_pipeline(cfg)
    digests = [{k: v for k, v in output_digests(r).items() if "report" not in k} for r in (whole, killed)]
    assert digests[0] == digests[1]
