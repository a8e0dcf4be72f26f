"""The CLI as a user sees it: exit codes, one-line errors, the demo end to end."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import numpy as np
import pytest
from typer.testing import CliRunner

from cellcorpus.cli import app
from tests._utils import output_digests
from tests.streaming_compat import streaming_dataset

runner = CliRunner()


def test_demo_runs_end_to_end(tmp_path, monkeypatch):
    out = tmp_path / "demo"
    result = runner.invoke(app, ["demo", str(out)])
    assert result.exit_code == 0, result.output
    assert "demo complete" in result.output
    # the outputs' bytes are those recorded before the seams refactor (#10): any change to them is deliberate
    stored = json.loads((Path(__file__).parents[1] / "data" / "demo_output_digests.json").read_text())
    assert output_digests(out) == stored
    for merged, mds, n_min in (
        ("tahoe_merged_w_metadata", "tahoe_merged_MDS_v2", 400),
        ("scbasecamp_merged", "scbasecamp_merged_MDS", 500),
        ("cellxgene_merged", "cellxgene_merged_MDS", 590),
    ):
        train = datasets.load_from_disk(str(out / merged / "train.dataset"))
        valid = datasets.load_from_disk(str(out / merged / "valid.dataset"))
        assert len(train) + len(valid) >= n_min
        ds = streaming_dataset(str(out / mds / "train"))
        assert len(ds) > 0
        assert int(ds[0]["genes"][0]) == 1  # <cls>
    # the same plates as a Geneformer V2 corpus: medians from the stats stage, <cls> ... <eos> in 4096
    geneformer = datasets.load_from_disk(str(out / "geneformer" / "merged" / "train.dataset"))
    vocab = json.loads((out / "geneformer" / "vocab" / "token_dictionary.json").read_text())
    assert len(geneformer) > 400 and set(geneformer.column_names) >= {"input_ids", "length", "drug"}
    first = geneformer[0]["input_ids"]
    assert (first[0], first[-1]) == (vocab["<cls>"], vocab["<eos>"]) and geneformer[0]["length"] == len(first)
    assert (out / "geneformer" / "stats" / "gene_median.pkl").is_file()
    tahoe = datasets.load_from_disk(str(out / "tahoe_merged_w_metadata" / "train.dataset"))
    assert set(tahoe.column_names) >= {"drug", "sample", "Cell_ID_Cellosaur", "moa-fine", "plate"}
    # the plates once more, valid held out by whole samples (split_parameters.by): no sample on both sides
    by_sample = {s: set(datasets.load_from_disk(str(out / "tahoe_by_sample" / f"{s}.dataset"))["sample"])
                 for s in ("train", "valid")}  # fmt: skip
    assert by_sample["valid"] and not by_sample["train"] & by_sample["valid"]
    held = json.loads((out / "tahoe_by_sample" / "manifest.json").read_text())["held_out_groups"]
    assert (
        set(held) == by_sample["valid"]
        and "valid holds 1 whole group(s) of <code>sample</code>"
        in (out / "tahoe_by_sample" / "report" / "report.html").read_text()
    )
    # the three Tahoe-x1 corpora as one training mixture, a third each (`cellcorpus mix`)
    import yaml

    streams = yaml.safe_load((out / "mix" / "streams.yaml").read_text())["train_loader"]["dataset"]["streams"]
    assert list(streams) == ["tahoe_100m", "scbasecamp", "cellxgene_2025_01_21"]
    assert len({s["choose"] for s in streams.values()}) == 1 and "training mixture" in result.output
    # the Tahoe-x1 corpus against the Geneformer corpus of the same plates: every cell found by its content
    dedup = json.loads((out / "tahoe_merged_w_metadata" / "report" / "dedup.json").read_text())
    also = dedup["against"]["tahoe_100m_geneformer"]["cells_also_there"]
    assert dedup["duplicate_cells"] == 0 and also == dedup["cells"] == len(tahoe) + len(
        datasets.load_from_disk(str(out / "tahoe_merged_w_metadata" / "valid.dataset"))
    )
    # the demo names each dataset before its stages run, and ends with what to try next
    first_rule = result.output.index("dataset: tahoe_x1_v2/tahoe_100m.yaml")
    assert first_rule < result.output.index("tokenize") and "Try next" in result.output
    for merged in ("tahoe_merged_w_metadata", "scbasecamp_merged", "cellxgene_merged"):
        page = (out / merged / "report" / "report.html").read_text()
        for heading in ("What went in", "From cells read", "as a model sees them", "Vocabulary coverage",
                        "Metadata composition", "Output"):  # fmt: skip
            assert heading in page, (merged, heading)
        assert "<b>verify</b>: " in page and "all passed" in page  # run verifies before it reports
    # the demo's cell-line table misses some cell lines: the report says how many cells have none (issue 24)
    stats = json.loads((out / "tahoe_merged_w_metadata" / "report" / "stats.json").read_text())
    coverage = stats["join_coverage"]["Cell_ID_Cellosaur"]
    assert coverage["table"] == "cell_gen_dr_a97.csv" and 0.5 < coverage["share"] < 1
    empty = dict(stats["metadata_top_values"]["Cell_ID_Cellosaur"]).get("", 0)
    assert coverage["cells_with_value"] + empty == sum(v["cells"] for v in stats["splits"].values())
    page = (out / "tahoe_merged_w_metadata" / "report" / "report.html").read_text()
    assert "Join coverage" in page and "Cell_ID_Cellosaur: the 4 most frequent values" in page
    # the chemistry token: every drug a training sample carries has an id and a fingerprint row
    drug_to_id = json.loads((out / "tahoe_drugs" / "drug_to_id_pad.json").read_text())
    fps = np.load(out / "tahoe_drugs" / "drug_fps_pad.npy")
    tahoe_mds = streaming_dataset(str(out / "tahoe_merged_MDS_v2" / "train"))
    mds_drugs = {tahoe_mds[i]["drug"] for i in range(len(tahoe_mds))}
    assert mds_drugs and mds_drugs <= set(drug_to_id) and fps.shape == (len(drug_to_id), 2048)
    assert "Unparseable-1" not in drug_to_id and "skipped (not given an id): Unparseable-1" in result.output
    manifest = json.loads((out / "tahoe_merged_w_metadata" / "manifest.json").read_text())
    t = manifest["totals"]
    assert t["cells_read"] == t["filtered_obs_filter"] + t["written_train"] + t["written_valid"]
    # rerun: nothing to do
    again = runner.invoke(app, ["run", "configs/tahoe_x1_v2/tahoe_100m.yaml", "--set", f"output_root={out}"])
    assert again.exit_code == 0, again.output
    assert "tokenize: already complete" in again.output and "mds: already complete" in again.output
    assert "verify: all checks passed" not in again.output  # run prints the summary table instead
    # the same folder spelled relative to the working directory is the same work (it once was refused,
    # after the finished datasets' state.json had been removed)
    config = str(Path("configs/tahoe_x1_v2/tahoe_100m.yaml").resolve())
    monkeypatch.chdir(tmp_path)
    relative = runner.invoke(app, ["run", config, "--set", "output_root=demo"])
    assert relative.exit_code == 0, relative.output
    assert "tokenize: already complete" in relative.output and "mds: already complete" in relative.output
    # other settings on the finished output: refused, and the finished dataset still loads
    other = runner.invoke(app, ["run", config, "--set", "output_root=demo", "--set", "huggingface.pad_value=-1"])
    assert other.exit_code == 2 and "made with other settings" in other.output
    assert len(datasets.load_from_disk(str(out / "tahoe_merged_w_metadata" / "train.dataset"))) == len(tahoe)
    monkeypatch.chdir(Path(__file__).resolve().parents[2])
    checked = runner.invoke(app, ["verify", "configs/tahoe_x1_v2/scbasecamp.yaml", "--set", f"output_root={out}"])
    assert checked.exit_code == 0 and "all checks passed" in checked.output


def test_misspelled_key_exit_2_names_key(write_config):
    path = write_config(**{"huggingface.obs_filtr": {"key": "a", "value": "b"}})
    result = runner.invoke(app, ["tokenize", str(path)])
    assert result.exit_code == 2
    assert "huggingface.obs_filtr: unknown key" in result.output


def test_missing_input_exit_1_with_hint(write_config, tiny_vocab, tmp_path):
    result = runner.invoke(app, ["tokenize", str(write_config())])
    assert result.exit_code == 2
    assert "adata_dir: folder not found" in result.output
    (tmp_path / "raw").mkdir()
    result = runner.invoke(app, ["tokenize", str(write_config())])
    assert result.exit_code == 1
    assert "no .h5ad files found" in result.output and "hint:" in result.output


def test_verify_before_tokenize_is_clear(write_config):
    result = runner.invoke(app, ["verify", str(write_config())])
    assert result.exit_code == 2 and "nothing to verify" in result.output


def test_vocab_command(tmp_path, write_config):
    from tests._utils import GENES, make_h5ad

    ref = make_h5ad(tmp_path / "ref.h5ad", np.array([[1.0, 0, 0]]), [GENES[2], GENES[0], GENES[0] + ".3"])
    cfg = write_config(
        vocab={
            "reference_adata": str(ref),
            "use_col": "gene_id",
            "add_junk_tokens": True,
            "special_tokens": ["<pad>", "<cls>", "<eoc>"],
            "output_root": str(tmp_path / "vocab"),
            "output_file": "v.json",
            "id_to_gene_output_file": "names.json",
        }
    )
    result = runner.invoke(app, ["vocab", str(cfg)])
    assert result.exit_code == 0, result.output
    vocab = json.loads((tmp_path / "vocab" / "v.json").read_text())
    assert list(vocab)[:5] == ["<pad>", "<cls>", "<eoc>", GENES[0], GENES[2]] and len(vocab) == 64
    assert json.loads((tmp_path / "vocab" / "names.json").read_text()) == {GENES[0]: "SYM1", GENES[2]: "SYM0"}
    assert "1 duplicated gene id" in result.output


@pytest.mark.parametrize(
    "cmd", ["download", "vocab", "drugs", "tokenize", "mds", "verify", "report", "run", "demo", "genes"]
)
def test_help_for_every_command(cmd):
    result = runner.invoke(app, [cmd, "--help"])
    assert result.exit_code == 0 and "Usage" in result.output
    assert "<bool>" not in result.output  # a flag takes no value (typer 0.29 printed `--debug <bool>`)
    assert "PNG" not in result.output  # the report's figures are inline SVG


@pytest.mark.dask
def test_tokenize_on_a_local_dask_cluster_matches_the_pool(tmp_path, write_config):
    from tests._utils import data_bytes, random_corpus

    outs = []
    for name, extra in (("pool", ["--num-proc", "2"]), ("dask", ["--dask", "local", "--num-proc", "2"])):
        root = tmp_path / name
        random_corpus(root, seed=9)
        result = runner.invoke(app, ["tokenize", str(write_config(root, **{"huggingface.unit_cells": 100})), *extra])
        assert result.exit_code == 0, result.output
        outs.append(data_bytes(root / "merged" / "train.dataset"))
    assert outs[0] == outs[1]


def test_a_summary_with_only_a_note_prints_the_note(capsys):
    from cellcorpus.cli import _print_summary
    from cellcorpus.stages.base import StageSummary

    _print_summary(StageSummary("drugs", notes=["RDKit is not installed: pip install 'cellcorpus[chem]'"]))
    assert "pip install 'cellcorpus[chem]'" in capsys.readouterr().out
