"""scBaseCamp / Tahoe plate downloads: the bucket replaced by a local fsspec URL (file://)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from cellcorpus.config import load_config
from cellcorpus.demo import make_demo_atlas
from cellcorpus.errors import InputError, MissingExtraError, UnitFailed
from cellcorpus.pipeline import packaged_config
from cellcorpus.sources import remote
from cellcorpus.stages.download import run_download
from cellcorpus.stages.tokenize import run_tokenize
from cellcorpus.stages.vocab import run_vocab
from tests._utils import arrow_rows


@pytest.fixture
def bucket(tmp_path):
    """A 'bucket' holding the demo atlas's scBaseCamp files + sample metadata, and a Tahoe plate folder."""
    atlas = make_demo_atlas(tmp_path / "atlas")
    b = tmp_path / "bucket"
    shutil.copytree(atlas.scbasecamp_dir, b / "scbasecamp" / "h5ad" / "Homo_sapiens")
    shutil.copy(atlas.tables["srx"], b / "scbasecamp" / "sample_metadata.parquet")
    shutil.copytree(atlas.tahoe_dir, b / "tahoe" / "h5ad")
    shutil.copytree(atlas.tahoe_dir.parent / "metadata", b / "tahoe" / "metadata")  # the release's gene table
    return atlas, b


def _tahoe_overrides(b: Path, root: Path) -> list[str]:
    """The shipped Tahoe config's bucket and gene table (from Hugging Face, shipped) in the local 'bucket'."""
    return [
        f"output_root={root}",
        f"tahoe.url=file://{b}/tahoe/h5ad",
        f"tahoe.metadata_urls=[file://{b}/tahoe/metadata/gene_metadata.parquet]",
    ]


def _sbc_overrides(tmp_path, b, root):
    return [
        f"output_root={root}",
        f"scbasecamp.url=file://{b}/scbasecamp/h5ad/Homo_sapiens",
        f"scbasecamp.metadata_urls=[file://{b}/scbasecamp/sample_metadata.parquet]",
        f"vocab.reference_adata={tmp_path}/atlas/raw/tahoe_100m/h5ad/plate14_filt_Vevo_Tahoe100M_WServicesFrom_ParseGigalab.h5ad",
    ]


def test_scbasecamp_fetch_resume_refetch_then_tokenize(tmp_path, bucket, monkeypatch):
    atlas, b = bucket
    root = tmp_path / "out"
    cfg = load_config(packaged_config("tahoe_x1_v2/scbasecamp.yaml"), _sbc_overrides(tmp_path, b, root))
    s = run_download("scbasecamp", cfg)
    assert s.counts["files"] == 3 and s.counts["fetched now"] == 3
    local = root / "raw" / "scbasecamp"
    assert sorted(p.name for p in (local / "h5ad").glob("*.h5ad")) == ["SRX_batch0.h5ad", "SRX_batch1.h5ad"]
    assert (local / "metadata" / "sample_metadata.parquet").is_file()
    # rerun: nothing fetched; a truncated cache file (size mismatch) is fetched again
    assert run_download("scbasecamp", cfg).counts["fetched now"] == 0
    f = local / "h5ad" / "SRX_batch1.h5ad"
    f.write_bytes(f.read_bytes()[:100])
    assert run_download("scbasecamp", cfg).counts["fetched now"] == 1
    assert f.read_bytes() == (atlas.scbasecamp_dir / "SRX_batch1.h5ad").read_bytes()
    manifest = json.loads((local / "download_manifest.json").read_text())
    assert len(manifest["files"]) == 3
    # then tokenize with the shipped config: SRX accession + joined sample metadata + filter_cells
    run_vocab(cfg)
    t = run_tokenize(cfg)
    assert t.counts["filtered_min_genes"] + t.counts["filtered_min_counts"] > 0
    rows = arrow_rows(root / "scbasecamp_merged" / "train.dataset")
    by_srx = {r["SRX_accession"]: r for r in rows}
    assert by_srx["SRX1000"]["tissue"] == "lung" and by_srx["SRX1001"]["disease"] == "COVID-19"
    assert by_srx["SRX1003"]["tissue"] == ""  # no metadata row: empty strings
    import anndata as ad
    import numpy as np

    from cellcorpus.core.ids import decode_ids

    files = [ad.read_h5ad(p).X for p in sorted((local / "h5ad").glob("*.h5ad"))]
    f, r = decode_ids(np.array([row["id"] for row in rows]))
    kept = [files[fi][ri] for fi, ri in zip(f.tolist(), r.tolist(), strict=True)]
    assert all((x.data != 0).sum() >= 10 and x.sum() >= 20 for x in kept)  # filter_cells on the file's genes


def test_fetch_failure_is_retried_then_named(tmp_path, bucket, monkeypatch):
    _, b = bucket
    root = tmp_path / "out"
    overrides = [*_tahoe_overrides(b, root), "tahoe.num_proc=1"]  # patched in-process
    cfg = load_config(packaged_config("tahoe_x1_v2/tahoe_100m.yaml"), overrides)
    from fsspec.implementations.local import LocalFileSystem

    calls = []
    real_get = LocalFileSystem.get_file

    def flaky(self, path, dest, **kw):
        calls.append(path)
        if len(calls) <= 2:
            raise ConnectionError("transient")
        return real_get(self, path, dest, **kw)

    monkeypatch.setattr(LocalFileSystem, "get_file", flaky)
    monkeypatch.setattr(remote.time, "sleep", lambda s: None)
    s = run_download("tahoe", cfg)
    assert s.counts["files"] == 3 and len(calls) == 5  # two plates + the gene table; two transient failures retried
    h5ad = root / "raw" / "tahoe_100m" / "h5ad"
    assert not [p for p in h5ad.iterdir() if ".tmp" in p.name]  # no partial files left

    def always(self, path, dest, **kw):
        with open(dest, "wb") as f:
            f.write(b"partial")
        raise ConnectionError("connection reset")

    for p in h5ad.glob("*.h5ad"):
        os.remove(p)
    monkeypatch.setattr(LocalFileSystem, "get_file", always)
    with pytest.raises(UnitFailed, match=r"failed to fetch .*plate13.* after 4 attempt\(s\): connection reset"):
        run_download("tahoe", cfg)
    assert not list(h5ad.iterdir())  # nothing partial left looking complete


def test_empty_listing_and_unknown_source(tmp_path):
    cfg = load_config(
        packaged_config("tahoe_x1_v2/tahoe_100m.yaml"), [f"output_root={tmp_path}", f"tahoe.url=file://{tmp_path}/none"]
    )
    (tmp_path / "none").mkdir()
    with pytest.raises(InputError, match="no files match"):
        run_download("tahoe", cfg)
    from cellcorpus.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown source 'gdrive'"):
        run_download("gdrive", cfg)


def test_gcs_needs_gcsfs_or_fails_fast_offline(monkeypatch):
    import socket

    def refuse(*a, **k):
        raise OSError("network unreachable")

    monkeypatch.setattr(socket, "create_connection", refuse)
    with pytest.raises(InputError, match=r"cannot reach storage\.googleapis\.com"):
        remote.check_reachable("gs://arc-ctc-scbasecamp/2025-02-25/h5ad")
    import sys

    monkeypatch.setitem(sys.modules, "gcsfs", None)
    with pytest.raises(MissingExtraError, match="gcsfs"):
        remote.open_bucket("gs://bucket/path")


def test_tahoe_plates_download_then_tokenize_with_shipped_config(tmp_path, bucket):
    atlas, b = bucket
    root = tmp_path / "out"
    shutil.copytree(atlas.root / "metadata", root / "metadata")  # the seed's three Tahoe tables
    overrides = [*_tahoe_overrides(b, root), "huggingface.num_proc=1"]
    cfg = load_config(packaged_config("tahoe_x1_v2/tahoe_100m.yaml"), overrides)
    assert run_download("tahoe", cfg).counts["files"] == 3  # two plates and the gene table
    run_vocab(cfg)
    s = run_tokenize(cfg)
    assert s.counts["cells_read"] == 600 and s.counts["filtered_obs_filter"] > 0
    import anndata as ad

    plates = [ad.read_h5ad(p) for p in sorted((root / "raw" / "tahoe_100m" / "h5ad").glob("*.h5ad"))]
    want = sum(int((p.obs["pass_filter"] == "full").sum()) for p in plates)
    assert s.counts["written_train"] + s.counts["written_valid"] == want
    rows = arrow_rows(root / "tahoe_merged_w_metadata" / "train.dataset")
    cols = set(rows[0])
    assert {
        "drug",
        "sample",
        "index",
        "Cell_ID_Cellosaur",
        "moa-fine",
        "canonical_smiles",
        "pubchem_cid",
        "plate",
    } <= cols
    obs = {i: p.obs.loc[i] for p in plates for i in p.obs_names}
    for r in rows[:50]:
        o = obs[r["index"]]
        assert r["drug"] == o["drug"] and r["sample"] == o["sample"]
        assert r["plate"] == r["sample"].rsplit("_", 1)[0].replace("smp_", "plate")
        assert r["Cell_ID_Cellosaur"] == ("" if o["cell_line"] == "CVCL_UNKNOWN" else f"{o['cell_line']}_cellosaurus")
