from pathlib import Path

import pytest

from cellcorpus.config import load_config
from cellcorpus.errors import ConfigError
from cellcorpus.pipeline import DEMO_CONFIGS, packaged_config

REPO_CONFIGS = sorted((Path(__file__).parents[1] / "configs").rglob("*.yaml"))


def test_repo_configs_are_the_packaged_ones():
    names = {p.relative_to(Path(__file__).parents[1] / "configs").as_posix() for p in REPO_CONFIGS}
    assert set(DEMO_CONFIGS) <= names and "demo.yaml" in names
    for name in DEMO_CONFIGS:
        assert packaged_config(name).is_file()


@pytest.mark.parametrize("path", REPO_CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_loads_and_validates(path, tmp_path):
    cfg = load_config(path, [f"output_root={tmp_path}"])
    arrow_only = ("minimal.yaml", "tahoe_100m_geneformer.yaml")  # Geneformer reads the HF datasets
    assert cfg.huggingface is not None and (cfg.mds is not None or path.name in arrow_only)
    assert cfg.huggingface.merged_dataset_root.startswith(str(tmp_path))
    assert cfg.huggingface.ignore_dir == []  # the seed's `ignore_dir: None` string


def test_seed_settings_reproduced(tmp_path):
    tahoe = load_config(packaged_config("tahoe_x1_v2/tahoe_100m.yaml"), [f"output_root={tmp_path}"])
    hf = tahoe.huggingface
    assert (hf.obs_filter.key, hf.obs_filter.value) == ("pass_filter", "full")
    assert hf.split_parameters.test_size == 0.01 and hf.split_parameters.seed == 42 and hf.split_parameters.shuffle
    assert [j.columns for j in hf.additional_metadata_info] == [
        ["Cell_ID_Cellosaur"],
        ["moa-fine", "canonical_smiles", "pubchem_cid", "targets"],
        ["plate"],
    ]
    assert tahoe.mds.columns["genes"] == "pkl" and tahoe.mds.hashes == ["sha1", "xxh64"]
    sbc = load_config(packaged_config("tahoe_x1_v2/scbasecamp.yaml"), [f"output_root={tmp_path}"])
    assert sbc.huggingface.filter_cells.min_genes == 10 and sbc.huggingface.filter_cells.min_counts == 20
    assert sbc.huggingface.add_obs_index is False and sbc.mds.min_length == 10
    cxg = load_config(packaged_config("tahoe_x1_v2/cellxgene_2025_01_21.yaml"), [f"output_root={tmp_path}"])
    assert cxg.cellxgene.min_count_per_gene == 3 and cxg.cellxgene.chunk_size == 100_000
    assert cxg.huggingface.gene_col == "feature_id" and cxg.vocab.output_file == "vevo_v2_vocab.json"


def test_output_root_must_be_set():
    with pytest.raises(ConfigError, match="output_root"):
        load_config(packaged_config("tahoe_x1_v2/tahoe_100m.yaml"))


def test_misspelled_key_is_named(write_config):
    path = write_config(**{"huggingface.filter_cels": {"min_genes": 3}})
    with pytest.raises(ConfigError, match=r"huggingface\.filter_cels: unknown key"):
        load_config(path)


def test_wrong_type_is_named(write_config):
    path = write_config(**{"huggingface.split_parameters.test_size": "lots"})
    with pytest.raises(ConfigError, match=r"huggingface\.split_parameters\.test_size"):
        load_config(path)


def test_test_size_range_checked(write_config):
    with pytest.raises(ConfigError, match="test_size"):
        load_config(write_config(**{"huggingface.split_parameters.test_size": 1.5}))


def test_non_mapping_config_rejected(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(p)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_every_path_derives_from_output_root_unless_set(tmp_path):
    """Issue 24: a dict config needed four path keys even with output_root set."""
    cfg = load_config(
        {"output_root": str(tmp_path), "huggingface": {"adata_dir": "in"}, "mds": {"columns": {"id": "int64"}}}
    )
    hf = cfg.huggingface
    assert (hf.output_root, hf.merged_dataset_root, hf.vocab_file) == (
        f"{tmp_path}/work",
        f"{tmp_path}/merged",
        f"{tmp_path}/vocab/vocab.json",
    )
    assert (cfg.mds.out_root, cfg.mds.root_dir) == (f"{tmp_path}/mds", f"{tmp_path}/merged")
    with_vocab = load_config(
        {
            "output_root": "r",
            "vocab": {"reference_adata": "ref.h5ad", "output_file": "v.json"},
            "huggingface": {"adata_dir": "in", "merged_dataset_root": "elsewhere"},
        }  # fmt: skip
    )
    assert with_vocab.huggingface.vocab_file == "r/vocab/v.json" == with_vocab.vocab.vocab_file
    assert with_vocab.huggingface.merged_dataset_root == "elsewhere"  # a key that is set is kept
    from cellcorpus.errors import ConfigError

    with pytest.raises(ConfigError, match="huggingface.output_root: required key missing"):
        load_config({"huggingface": {"adata_dir": "in"}})  # nothing to derive from


def test_minimal_config_runs_as_written_on_the_demo_inputs(tmp_path, monkeypatch):
    """`cellcorpus config init minimal DIR`: a config of at most 15 lines that runs as written after the demo."""
    from typer.testing import CliRunner

    from cellcorpus.cli import app
    from cellcorpus.demo import make_demo_atlas

    monkeypatch.chdir(tmp_path)
    make_demo_atlas(tmp_path / "demo_out")
    runner = CliRunner()
    assert runner.invoke(app, ["config", "init", "minimal", "mine"]).exit_code == 0
    text = (tmp_path / "mine" / "minimal.yaml").read_text()
    assert len(text.splitlines()) <= 15
    done = runner.invoke(app, ["run", "mine/minimal.yaml", "--num-proc", "1"])
    assert done.exit_code == 0, done.output
    assert (tmp_path / "my_corpus" / "merged" / "train.dataset" / "state.json").is_file()
    assert (tmp_path / "my_corpus" / "merged" / "report" / "report.html").is_file()


def test_docs_config_md_is_current():
    """docs/config.md lists every key with its type, default and meaning, generated from the models; this fails
    when a key changes and the page is not regenerated (python -m cellcorpus.config_reference > docs/config.md)."""
    from cellcorpus.config_reference import config_reference

    page = (Path(__file__).parents[1] / "docs" / "config.md").read_text()
    assert page == config_reference()
    for key in ("`split_parameters`", "`key`", "`by`", "`unit_cells`", "`direct`", "`columns`"):
        assert key in page
    rows = [line for line in page.splitlines() if line.startswith("| `")]
    assert len(rows) > 100 and all(not line.endswith("|  |") for line in rows)  # every key has a meaning
