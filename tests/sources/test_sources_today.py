"""The three sources as they can be reached today, against local stand-ins of their current layouts:
the Tahoe-100M Hugging Face release end to end with the shipped config, the Arc Requester Pays bucket
paths over file:// and a 127.0.0.1 HTTP server, Requester Pays refusals, and offline failures."""

from __future__ import annotations

import json
import socket

import anndata as ad
import fsspec
import numpy as np
import pytest
from fsspec.implementations.local import LocalFileSystem
from typer.testing import CliRunner

from cellcorpus.cli import app
from cellcorpus.config import load_config
from cellcorpus.core.ids import decode_ids
from cellcorpus.demo import make_demo_atlas
from cellcorpus.errors import ConfigError
from cellcorpus.pipeline import packaged_config
from cellcorpus.stages.download import run_download
from tests._release import RELEASE_METADATA, http_server, make_arc_bucket, make_release
from tests._utils import arrow_rows
from tests.streaming_compat import streaming_dataset

runner = CliRunner()
HF_CONFIG = "configs/tahoe_x1_v2/tahoe_100m_hf.yaml"


def _release_overrides(release, root) -> list[str]:
    metas = ",".join(f"file://{release}/metadata/{m}.parquet" for m in RELEASE_METADATA)
    return [
        f"output_root={root}",
        f"tahoe.url=file://{release}/data",
        f"tahoe.metadata_urls=[{metas}]",
        "tahoe.num_proc=1",
    ]


def test_tahoe_release_end_to_end_with_the_shipped_config(tmp_path):
    release = tmp_path / "release"
    tables = make_release(release)
    root = tmp_path / "out"
    sets = [x for o in _release_overrides(release, root) for x in ("--set", o)]
    got = runner.invoke(app, ["download", "tahoe", HF_CONFIG, *sets])
    assert got.exit_code == 0, got.output
    assert sorted(p.name for p in (root / "raw" / "tahoe_100m_hf" / "data").iterdir()) == [
        "train-00000-of-00002.parquet",
        "train-00001-of-00002.parquet",
    ]
    done = runner.invoke(app, ["run", HF_CONFIG, *sets, "--set", "huggingface.num_proc=1", "--set", "mds.num_proc=1"])
    assert done.exit_code == 0, done.output
    assert "all checks passed" not in done.output and "verify summary" in done.output
    manifest = json.loads((root / "tahoe_hf_merged" / "manifest.json").read_text())
    t = manifest["totals"]
    obs = tables["obs_metadata"]
    assert t["cells_read"] == 300
    assert t["filtered_obs_filter"] == int((obs["pass_filter"] != "full").sum())  # exactly the cells marked otherwise
    rows = arrow_rows(root / "tahoe_hf_merged" / "train.dataset") + arrow_rows(
        root / "tahoe_hf_merged" / "valid.dataset"
    )
    assert len(rows) == t["written_train"] + t["written_valid"] == int((obs["pass_filter"] == "full").sum())
    full = set(obs.loc[obs["pass_filter"] == "full", "BARCODE_SUB_LIB_ID"])
    assert {r["index"] for r in rows} == full
    # the Tahoe-x1 metadata columns, under the seed's names, from the release's own tables
    want = {"drug", "sample", "Cell_ID_Cellosaur", "moa-fine", "canonical_smiles", "pubchem_cid", "plate", "targets"}
    assert want <= set(rows[0])
    targets = dict(zip(tables["drug_metadata"]["drug"], tables["drug_metadata"]["targets"], strict=True))
    assert all(r["targets"] == targets[r["drug"]] and r["Cell_ID_Cellosaur"].startswith("CVCL_") for r in rows)
    # tokens: release token 3 + k -> gene k (versions ignored) -> our vocabulary, built from the gene table
    vocab = json.loads((root / "vocab" / "tahoe_hf_vocab.json").read_text())
    gene_table = tables["gene_metadata"]
    to_vocab = {
        int(t): vocab[e.split(".")[0]] for t, e in zip(gene_table["token_id"], gene_table["ensembl_id"], strict=True)
    }
    import pyarrow.parquet as pq

    f, r = decode_ids(np.array([rows[0]["id"]]))
    src = pq.read_table(root / "raw" / "tahoe_100m_hf" / "data" / f"train-{f[0]:05d}-of-00002.parquet").slice(r[0], 1)
    release_genes = src.column("genes")[0].as_py()
    assert rows[0]["genes"] == [vocab["<cls>"], *(to_vocab[g] for g in release_genes[1:])]
    # MDS reads back with the Tahoe-x1 columns; drugs have fingerprints
    ds = streaming_dataset(str(root / "tahoe_hf_merged_MDS" / "train"))
    assert {"drug", "Cell_ID_Cellosaur", "canonical_smiles", "pubchem_cid"} <= set(ds[0])
    drug_to_id = json.loads((root / "tahoe_hf_drugs" / "drug_to_id_pad.json").read_text())
    assert {r["drug"] for r in rows} <= set(drug_to_id)


def _sbc_cfg(tmp_path, url, meta_url, project="billing-project"):
    return load_config(
        packaged_config("tahoe_x1_v2/scbasecamp.yaml"),
        [
            f"output_root={tmp_path / 'out'}",
            f"scbasecamp.url={url}",
            f"scbasecamp.metadata_urls=[{meta_url}]",
            f"scbasecamp.requester_pays_project={project}",
            "scbasecamp.num_proc=1",
        ],
    )


ARC_SBC = "scbasecount/2026-01-12/h5ad/GeneFull_Ex50pAS/Homo_sapiens"
ARC_META = "scbasecount/2026-01-12/metadata/GeneFull_Ex50pAS/Homo_sapiens/sample_metadata.parquet"


def test_arc_bucket_layout_over_file_and_http_without_sizes(tmp_path):
    bucket = make_arc_bucket(tmp_path / "b")
    cfg = _sbc_cfg(tmp_path, f"file://{bucket}/{ARC_SBC}", f"file://{bucket}/{ARC_META}")
    assert run_download("scbasecamp", cfg).counts["files"] == 3
    local = tmp_path / "out" / "raw" / "scbasecamp"
    first = {p.name: p.read_bytes() for p in sorted((local / "h5ad").glob("*.h5ad"))}
    for p in (local / "h5ad").glob("*.h5ad"):
        p.unlink()
    (local / "metadata" / "sample_metadata.parquet").unlink()
    with http_server(bucket) as base:
        assert not base.endswith(":443")
        cfg = _sbc_cfg(tmp_path, f"{base}/{ARC_SBC}", f"{base}/{ARC_META}")
        s = run_download("scbasecamp", cfg)  # the HTTP listing has no sizes: each is taken from the response
        assert s.counts["fetched now"] == 3
        assert run_download("scbasecamp", cfg).counts["fetched now"] == 0  # size-checked cache: resumable
    assert {p.name: p.read_bytes() for p in sorted((local / "h5ad").glob("*.h5ad"))} == first


def test_known_requester_pays_bucket_needs_a_project_before_any_transfer(tmp_path, monkeypatch):
    def no_network(*a, **k):
        raise AssertionError("no connection may be attempted")

    monkeypatch.setattr(socket, "create_connection", no_network)
    cfg = load_config(packaged_config("tahoe_x1_v2/scbasecamp.yaml"), [f"output_root={tmp_path}"])
    with pytest.raises(ConfigError, match=r"scbasecamp\.requester_pays_project: gs://arc-institute-virtual-cell-atlas"):
        run_download("scbasecamp", cfg)
    result = runner.invoke(
        app, ["download", "tahoe", "configs/tahoe_x1_v2/tahoe_100m.yaml", "--set", f"output_root={tmp_path}"]
    )
    assert result.exit_code == 2 and "tahoe.requester_pays_project" in result.output


class _RequesterPaysFS(LocalFileSystem):
    """A storage that refuses unbilled reads the way GCS words it."""

    protocol = "rpfake"

    def glob(self, path, **kwargs):
        raise OSError("400 Bucket is a requester pays bucket but no user project provided.")


def test_requester_pays_refusal_from_the_storage_names_the_key(tmp_path):
    fsspec.register_implementation("rpfake", _RequesterPaysFS, clobber=True)
    cfg = _sbc_cfg(tmp_path, "rpfake:///bucket/h5ad", "rpfake:///bucket/meta.parquet", project="null")
    with pytest.raises(ConfigError, match=r"scbasecamp\.requester_pays_project: .* refused the read as Requester Pays"):
        run_download("scbasecamp", cfg)


def test_scbasecount_2026_layout_tokenizes_x_or_a_layer(tmp_path, write_config, tiny_vocab):
    """2026-01-12 files: extra obs columns and UniqueAndMult-* layers; counts_layer picks the matrix."""
    import scipy.sparse as sp

    from cellcorpus.stages.tokenize import run_tokenize
    from tests._utils import GENES

    X = sp.csr_matrix(np.array([[1, 0, 2, 0, 0], [0, 3, 0, 0, 1]], dtype=np.float32))
    em = sp.csr_matrix(np.array([[1.5, 0, 2, 0, 0.5], [0, 3, 0, 1, 1]], dtype=np.float32))
    obs = {
        "gene_count_Unique": [2, 2],
        "umi_count_UniqueAndMult-EM": [4.0, 5.0],
        "SRX_accession": ["SRX1", "SRX2"],
        "cell_type": ["T cell", "B cell"],
    }
    import pandas as pd

    a = ad.AnnData(X=X, obs=pd.DataFrame(obs, index=["c0", "c1"]), var=pd.DataFrame(index=GENES))
    a.layers["UniqueAndMult-EM"] = em
    a.layers["UniqueAndMult-Uniform"] = em
    (tmp_path / "raw").mkdir()
    a.write_h5ad(tmp_path / "raw" / "SRX1.h5ad")
    base = {"huggingface.gene_col": "index", "huggingface.obs_metadata_columns": ["SRX_accession", "cell_type"]}
    all_train = ["huggingface.split_parameters.test_size=0", "mds.splits=[train]"]
    run_tokenize(load_config(write_config(**base), all_train))
    rows = arrow_rows(tmp_path / "merged" / "train.dataset")
    assert [r["expressions"] for r in rows] == [[-2.0, 1.0, 2.0], [-2.0, 3.0, 1.0]]
    assert [r["cell_type"] for r in rows] == ["T cell", "B cell"]
    root = tmp_path / "em"
    cfg = write_config(
        root,
        **base,
        **{
            "huggingface.counts_layer": "UniqueAndMult-EM",
            "huggingface.adata_dir": str(tmp_path / "raw"),
            "huggingface.vocab_output_root": str(tmp_path / "vocab"),
        },
    )
    run_tokenize(load_config(cfg, all_train))
    assert [r["expressions"] for r in arrow_rows(root / "merged" / "train.dataset")] == [
        [-2.0, 1.5, 2.0, 0.5],
        [-2.0, 3.0, 1.0, 1.0],
    ]
    bad = write_config(
        root,
        **base,
        **{
            "huggingface.counts_layer": "spliced",
            "huggingface.adata_dir": str(tmp_path / "raw"),
            "huggingface.vocab_output_root": str(tmp_path / "vocab"),
        },
    )
    with pytest.raises(ConfigError, match=r"counts_layer: .*no layer 'spliced' \(layers: UniqueAndMult-EM"):
        run_tokenize(load_config(bad, all_train))


@pytest.mark.parametrize(
    "config,source,host",
    [
        ("tahoe_x1_v2/scbasecamp.yaml", "scbasecamp", "storage.googleapis.com"),
        ("tahoe_x1_v2/tahoe_100m.yaml", "tahoe", "storage.googleapis.com"),
        ("tahoe_x1_v2/tahoe_100m_hf.yaml", "tahoe", "huggingface.co"),
        ("tahoe_x1_v2/cellxgene_2025_01_21.yaml", "cellxgene", "s3.amazonaws.com"),
    ],
)
def test_offline_every_shipped_download_fails_in_one_line_naming_the_host(tmp_path, monkeypatch, config, source, host):
    def offline(address, *a, **k):
        raise OSError(101, "Network is unreachable")

    monkeypatch.setattr(socket, "create_connection", offline)
    make_demo_atlas(tmp_path)  # a vocabulary reference, for the Census download's gene selection
    sets = ["--set", f"output_root={tmp_path}"]
    if source != "cellxgene":
        sets += ["--set", f"{source}.requester_pays_project=my-project"]
    else:
        assert runner.invoke(app, ["vocab", str(packaged_config(config)), *sets]).exit_code == 0
    result = runner.invoke(app, ["download", source, str(packaged_config(config)), *sets])
    assert result.exit_code == 1, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"cannot reach {host}" in errors[0], result.output
    assert "Traceback" not in result.output
