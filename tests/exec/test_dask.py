"""The Dask executor seam: same units, byte-identical outputs, failures named."""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest

from cellcorpus.config import load_config
from cellcorpus.errors import UnitFailed
from cellcorpus.exec.runner import ExecutorSpec
from cellcorpus.stages.mds import run_mds
from cellcorpus.stages.tokenize import run_tokenize
from tests._utils import GENES, config_file, make_h5ad, random_corpus

pytest.importorskip("distributed")
pytestmark = pytest.mark.dask


def _inputs(root):
    random_corpus(root, seed=5)


def _files(root):
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for sub in ("merged", "mds")
        for p in sorted((root / sub).rglob("*"))
        if p.is_file() and p.name != "manifest.json" and ".units" not in p.parts
    }


def test_dask_outputs_byte_identical_to_local_pool(tmp_path, write_config):
    settings = {
        "huggingface.unit_cells": 64,
        "huggingface.shuffle_bucket_cells": 200,
        "huggingface.split_parameters": {"test_size": 0.1, "seed": 4, "shuffle": True},
        "mds.size_limit": 1 << 12,
    }
    outs = {}
    for name, spec in (
        ("pool", ExecutorSpec(num_proc=2)),
        ("dask", ExecutorSpec(dask="inprocess", dask_workers=2)),
    ):
        root = tmp_path / name
        _inputs(root)
        cfg = load_config(write_config(root, **settings))
        run_tokenize(cfg, spec)
        run_mds(cfg, spec)
        outs[name] = _files(root)
    assert outs["pool"] == outs["dask"]
    assert sum(k.endswith(".arrow") for k in outs["dask"]) >= 4 and any(k.endswith(".zstd") for k in outs["dask"])


def test_failing_unit_on_dask_is_named(tmp_path, write_config):
    _inputs(tmp_path)
    bad = np.ones((10, 5), np.float32)
    bad[3, 2] = -1
    make_h5ad(tmp_path / "raw" / "f9_bad.h5ad", bad, GENES)
    cfg = load_config(write_config(**{"huggingface.unit_cells": 64}))
    with pytest.raises(UnitFailed, match=r"unit f00002-r0000000000 \(.*f9_bad\.h5ad\) failed: .*1 negative count"):
        run_tokenize(cfg, ExecutorSpec(dask="inprocess", dask_workers=2))
    # finished units are kept: after fixing the file, a rerun completes without redoing them
    make_h5ad(tmp_path / "raw" / "f9_bad.h5ad", np.ones((10, 5), np.float32), GENES)
    kept = {p.stem for p in (tmp_path / "work" / "units" / "tokenize").glob("*.json")}
    assert kept and "f00002-r0000000000" not in kept
    s = run_tokenize(cfg, ExecutorSpec(dask="inprocess", dask_workers=2))
    assert s.counts["cells_read"] == 510


def test_dask_local_keeps_its_info_logs_out_of_the_progress_output(tmp_path):
    """`--dask local` used to print ~35 `distributed.*` INFO lines between the bars; `--debug` still shows them."""
    random_corpus(tmp_path, n_files=1, n_cells=40, seed=1)
    cmd = [sys.executable, "-m", "cellcorpus", "tokenize", config_file(tmp_path), "--dask", "local"]
    quiet = subprocess.run(cmd, capture_output=True, text=True)
    assert quiet.returncode == 0, quiet.stderr
    assert "distributed." not in quiet.stdout + quiet.stderr
    shutil.rmtree(tmp_path / "merged")  # so the second run tokenizes again
    debug = subprocess.run([*cmd, "--debug"], capture_output=True, text=True)
    assert debug.returncode == 0 and "distributed.scheduler" in debug.stdout + debug.stderr
