"""Output and input roots on a real S3 server (moto's, on the loopback address): the same bytes as local folders,
StreamingDataset reads the export from `s3://` and a Tahoe-x1-style collation batches it, `.h5ad` inputs are read
in place by row ranges, an upload killed half-way completes on rerun, and Dask gives the local pool's bytes.

Test-only dependency: `moto[server]` (an S3-compatible server on 127.0.0.1; no network).
"""

from __future__ import annotations

import socket

import fsspec
import pytest

from cellcorpus.config import load_config
from cellcorpus.errors import UnitFailed
from cellcorpus.io.owned import OWNER_MARK
from cellcorpus.pipeline import run_pipeline
from cellcorpus.stages import mds as mds_stage
from cellcorpus.stages.mds import run_mds
from cellcorpus.stages.tokenize import run_tokenize
from cellcorpus.stages.verify import run_verify
from tests._utils import arrow_rows, random_corpus
from tests.streaming_compat import import_streaming

moto_server = pytest.importorskip("moto.server", reason="moto[server] is a test dependency (pip install '.[test]')")

SETTINGS = {
    "huggingface.unit_cells": 100,
    "huggingface.obs_metadata_columns": ["drug"],
    "huggingface.split_parameters": {"test_size": 0.2, "seed": 1, "shuffle": True},
    "mds.size_limit": 1 << 12,
    "mds.columns": {"genes": "pkl", "expressions": "pkl", "id": "int64", "drug": "str"},
}


@pytest.fixture(scope="module")
def endpoint():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def bucket(endpoint, monkeypatch, request):
    """A fresh bucket; fsspec (this process through its config, workers through the environment) and
    mosaicml-streaming (S3_ENDPOINT_URL) pointed at the server."""
    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "FSSPEC_S3_ENDPOINT_URL": endpoint,
        "S3_ENDPOINT_URL": endpoint,
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setitem(fsspec.config.conf, "s3", {"endpoint_url": endpoint})
    fsspec.filesystem("s3", skip_instance_cache=True)  # no instance made before the endpoint was set
    name = "b-" + request.node.name.lower().replace("_", "-").replace("[", "-").replace("]", "")[:50]
    fs = fsspec.filesystem("s3", endpoint_url=endpoint, skip_instance_cache=True)
    fs.mkdir(name)
    yield f"s3://{name}"
    fs.rm(name, recursive=True)


def _tree(url: str) -> dict[str, bytes]:
    fs, root = fsspec.core.url_to_fs(url, skip_instance_cache=True)
    out = {}
    for p in fs.find(root):
        rel = p[len(root) :].lstrip("/")
        if not (rel.endswith("manifest.json") or rel.startswith((".units", OWNER_MARK, "report/"))):
            out[rel] = fs.cat_file(p)
    return out


def _local_trees(tmp_path, write_config) -> tuple[dict, dict]:
    root = tmp_path / "local"
    random_corpus(root, seed=4, n_drugs=3)
    cfg = load_config(write_config(root, **SETTINGS))
    run_tokenize(cfg)
    run_mds(cfg)
    return _tree(f"file://{root}/merged"), _tree(f"file://{root}/mds")


def _s3_config(root, base: str, write_config, **overrides):
    random_corpus(root, seed=4, n_drugs=3)
    settings = {
        "huggingface.merged_dataset_root": f"{base}/merged",
        "mds.root_dir": f"{base}/merged",
        "mds.out_root": f"{base}/mds",
        "mds.staging_dir": str(root / "mds_staging"),
        **SETTINGS,
        **overrides,
    }
    return load_config(write_config(root, **settings))


def _collate(samples, max_length: int, pad_id: int = 0, pad_value: float = -2.0):
    """As the Tahoe-x1 collator batches `pkl` samples: torch tensors, cut to `max_length` (CLS kept first),
    padded with the pad token and the pad value."""
    import torch

    genes = torch.full((len(samples), max_length), pad_id, dtype=torch.long)
    values = torch.full((len(samples), max_length), pad_value, dtype=torch.float32)
    for i, s in enumerate(samples):
        g, e = torch.as_tensor(s["genes"]).squeeze()[:max_length], torch.as_tensor(s["expressions"]).squeeze()
        genes[i, : len(g)] = g
        values[i, : len(g)] = e[: len(g)]
    return {"gene": genes, "expr": values}


def test_s3_roots_match_local_folders_and_stream_into_a_batch(tmp_path, write_config, bucket):
    want_hf, want_mds = _local_trees(tmp_path, write_config)
    cfg = _s3_config(tmp_path / "s3run", bucket, write_config, **{"huggingface.num_proc": 2})
    summaries = {s.stage: s for s in run_pipeline(cfg)}  # tokenize + fused MDS + verify + report, uploaded
    assert not summaries["tokenize"].skipped
    assert _tree(f"{bucket}/merged") == want_hf
    assert _tree(f"{bucket}/mds") == want_mds
    streaming = import_streaming()
    ds = streaming.StreamingDataset(
        remote=f"{bucket}/mds/train", local=str(tmp_path / "cache"), shuffle=False, batch_size=4,
        allow_unsafe_types=True,
    )  # fmt: skip
    rows = arrow_rows(tmp_path / "local" / "merged" / "train.dataset")
    assert len(ds) == len(rows)
    batch = _collate([ds[i] for i in range(4)], max_length=8)
    assert batch["gene"].shape == (4, 8) and batch["gene"].dtype.is_floating_point is False
    for i in range(4):
        n = min(len(rows[i]["genes"]), 8)
        assert batch["gene"][i, :n].tolist() == rows[i]["genes"][:n]
        assert batch["expr"][i, :n].tolist() == rows[i]["expressions"][:n]


def test_h5ad_inputs_read_in_place_from_s3(tmp_path, write_config, bucket):
    """adata_dir on S3: h5py reads each unit's rows through ranged GETs; no input is copied to local disk."""
    local = tmp_path / "local"
    random_corpus(local, seed=4, n_drugs=3)
    cfg = load_config(write_config(local, **SETTINGS))
    run_tokenize(cfg)
    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    for p in sorted((local / "raw").glob("*.h5ad")):
        fs.put_file(str(p), f"{bucket[5:]}/raw/{p.name}")
    remote = tmp_path / "remote"
    random_corpus(remote, seed=99)  # its own vocabulary; its raw files are not the ones read
    cfg2 = load_config(write_config(remote, **SETTINGS, **{"huggingface.adata_dir": f"{bucket}/raw"}))
    run_tokenize(cfg2)
    for split in ("train", "valid"):
        assert arrow_rows(remote / "merged" / f"{split}.dataset") == arrow_rows(local / "merged" / f"{split}.dataset")
    assert not [p for p in (remote / "work").rglob("*.h5ad")]  # read in place, never downloaded whole


def test_upload_killed_half_way_completes_on_rerun(tmp_path, write_config, bucket, monkeypatch):
    want_hf, want_mds = _local_trees(tmp_path, write_config)
    cfg = _s3_config(tmp_path / "s3run", bucket, write_config)
    run_tokenize(cfg)
    real, seen = mds_stage.mds_unit, []

    def killed(unit, ctx):
        seen.append(unit.unit_id)
        if len(seen) == 2:  # the first writer folder uploaded, the second lost
            raise RuntimeError("connection lost")
        return real(unit, ctx)

    monkeypatch.setattr(mds_stage, "mds_unit", killed)
    with pytest.raises(UnitFailed, match="connection lost"):
        run_mds(cfg)
    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    assert fs.find(f"{bucket[5:]}/mds/train")  # some shards were uploaded before the loss
    assert not fs.exists(f"{bucket[5:]}/mds/train/index.json")  # nothing half-uploaded looks complete
    assert not fs.exists(f"{bucket[5:]}/mds/manifest.json")
    monkeypatch.setattr(mds_stage, "mds_unit", real)
    run_mds(cfg)
    assert _tree(f"{bucket}/mds") == want_mds
    run_verify(cfg)


@pytest.mark.dask
def test_dask_cluster_writes_the_pools_bytes_to_s3(tmp_path, write_config, bucket):
    pytest.importorskip("distributed")
    want_hf, want_mds = _local_trees(tmp_path, write_config)
    cfg = _s3_config(tmp_path / "s3run", bucket, write_config)
    summaries = list(run_pipeline(cfg, num_proc=2, dask="local"))  # a LocalCluster: 2 workers x 1 thread
    assert {s.stage for s in summaries} >= {"tokenize", "mds", "verify", "report"}
    assert _tree(f"{bucket}/merged") == want_hf and _tree(f"{bucket}/mds") == want_mds
