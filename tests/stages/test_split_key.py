"""Splits that follow the cell, not the file (issue 22, part 1): `split_parameters.key` hashes the values of
content columns, so the same cells read from another layout (re-chunked, reordered, another format) are held
out the same way; a key that does not identify a cell stops tokenize, naming the cells and the values."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from cellcorpus.config import load_config
from cellcorpus.core.split import key_ids
from cellcorpus.errors import ConfigError, InputError, UnitFailed
from cellcorpus.stages import tokenize_keys
from cellcorpus.stages.tokenize import run_tokenize
from tests._utils import GENES, arrow_rows, make_h5ad, write_vocab

N = 600


def _cells(seed: int = 3) -> tuple[sp.csr_matrix, list[str], list[str]]:
    rng = np.random.default_rng(seed)
    m = sp.random(N, len(GENES), density=0.5, random_state=rng, format="csr", dtype=np.float32)
    m.data = np.ceil(m.data * 9)
    barcodes = [f"AAC{i:05d}-lib_{1100 + i % 3}" for i in range(N)]
    samples = [f"smp_{i % 4}" for i in range(N)]
    return m, barcodes, samples


def _layout(root: Path, pieces: list[np.ndarray]) -> None:
    """The same N cells written as one h5ad per piece of row numbers (any order within a piece)."""
    m, barcodes, samples = _cells()
    write_vocab(root / "vocab" / "vocab.json")
    for k, rows in enumerate(pieces):
        obs = {"sample": [samples[r] for r in rows]}
        make_h5ad(root / "raw" / f"part{k}.h5ad", m[rows], GENES, obs, obs_index=[barcodes[r] for r in rows])


def _valid(root: Path, write_config, key) -> set[str]:
    cfg = load_config(
        write_config(
            root,
            **{"huggingface.split_parameters.key": key, "huggingface.split_parameters.test_size": 0.2},
        )
    )
    run_tokenize(cfg)
    train = {r["index"] for r in arrow_rows(root / "merged" / "train.dataset")}
    valid = {r["index"] for r in arrow_rows(root / "merged" / "valid.dataset")}
    assert len(train | valid) > 0.9 * N and not train & valid  # (cells without a vocabulary gene are dropped)
    return valid


def test_the_same_cells_in_another_layout_are_held_out_the_same_way(tmp_path, write_config):
    rng = np.random.default_rng(0)
    one = [np.arange(N)]
    rechunked = np.array_split(rng.permutation(N), 3)  # three files, rows in another order
    for name, pieces in (("a", one), ("b", rechunked), ("a_id", one), ("b_id", rechunked)):
        _layout(tmp_path / name, pieces)
    by_key = [_valid(tmp_path / name, write_config, ["index", "sample"]) for name in ("a", "b")]
    assert by_key[0] == by_key[1] and 60 < len(by_key[0]) < 180  # ~20% of 600
    by_id = [_valid(tmp_path / name, write_config, "id") for name in ("a_id", "b_id")]
    assert by_id[0] != by_id[1]  # the default hashes (file, row): another layout, another split


def test_key_values_hash_the_same_in_any_order_and_unit():
    a = np.array([f"cell{i}" for i in range(1000)], dtype=object)
    s = np.array([f"s{i % 7}" for i in range(1000)], dtype=object)
    whole = key_ids([a, s])
    perm = np.random.default_rng(1).permutation(1000)
    assert np.array_equal(key_ids([a[perm], s[perm]]), whole[perm])
    assert np.array_equal(np.concatenate([key_ids([a[:10], s[:10]]), key_ids([a[10:], s[10:]])]), whole)
    assert len(np.unique(whole)) == 1000
    assert not np.array_equal(key_ids([s, a]), whole)  # the columns' order is part of the key
    # a value and the same text split differently over two columns are different keys
    assert key_ids([np.array(["ab"]), np.array(["c"])])[0] != key_ids([np.array(["a"]), np.array(["bc"])])[0]


def test_a_key_repeated_within_a_file_names_both_rows_and_the_values(tmp_path, write_config):
    m, barcodes, samples = _cells()
    write_vocab(tmp_path / "vocab" / "vocab.json")
    barcodes[7] = barcodes[3]
    samples[7] = samples[3]
    make_h5ad(tmp_path / "raw" / "p.h5ad", m, GENES, {"sample": samples}, obs_index=barcodes)
    cfg = load_config(write_config(tmp_path, **{"huggingface.split_parameters.key": ["index", "sample"]}))
    # raised in the unit that read both rows (reported as that unit's failure, naming the input)
    with pytest.raises(
        UnitFailed, match=r"p\.h5ad: .*rows 3 and 7 both have index='AAC00003-lib_1100', sample='smp_3'"
    ):
        run_tokenize(cfg)
    assert not (tmp_path / "merged" / "train.dataset" / "state.json").exists()


@pytest.mark.parametrize("part_keys", [tokenize_keys.PART_KEYS, 64])  # in memory, and over partition files
def test_a_key_repeated_across_files_stops_before_any_dataset_is_written(
    tmp_path, write_config, monkeypatch, part_keys
):
    monkeypatch.setattr(tokenize_keys, "PART_KEYS", part_keys)
    m, barcodes, samples = _cells()
    write_vocab(tmp_path / "vocab" / "vocab.json")
    make_h5ad(tmp_path / "raw" / "p0.h5ad", m[:300], GENES, {"sample": samples[:300]}, obs_index=barcodes[:300])
    again = barcodes[300:]
    again[150] = barcodes[42]  # the same barcode and sample as p0's row 42
    s1 = samples[300:]
    s1[150] = samples[42]
    make_h5ad(tmp_path / "raw" / "p1.h5ad", m[300:], GENES, {"sample": s1}, obs_index=again)
    cfg = load_config(
        write_config(
            tmp_path, **{"huggingface.split_parameters.key": ["index", "sample"], "huggingface.unit_cells": 100}
        )
    )
    with pytest.raises(
        InputError, match=r"p0\.h5ad row 42 and p1\.h5ad row 150 both have index='AAC00042-lib_1100', sample='smp_2'"
    ):
        run_tokenize(cfg)
    assert not (tmp_path / "merged" / "train.dataset").exists() or not any(
        (tmp_path / "merged" / "train.dataset").glob("data-*.arrow")
    )
    # another sample: the two cells differ by their key, so the corpus is written; a rerun has nothing to do
    s1[150] = "smp_other"
    make_h5ad(tmp_path / "raw" / "p1.h5ad", m[300:], GENES, {"sample": s1}, obs_index=again)
    done = run_tokenize(cfg)
    assert done.counts["written_train"] + done.counts["written_valid"] > 0.9 * N and not done.skipped
    assert run_tokenize(cfg).skipped
    assert not (tmp_path / "work" / "parts").exists()  # the saved keys went with the parts


def test_the_default_key_keeps_identity_and_a_bad_key_is_named(tmp_path, write_config):
    with pytest.raises(ConfigError, match=r"split_parameters.key"):
        load_config(write_config(tmp_path, **{"huggingface.split_parameters.key": ["id", "sample"]}))
    cfg = load_config(write_config(tmp_path, **{"huggingface.split_parameters.key": "sample"}))
    assert cfg.huggingface.split_parameters.key == ["sample"]


def test_key_id_gives_the_demo_outputs_of_before_byte_for_byte(tmp_path):
    """The shipped configs now split by content; `key: id` on them is the seed's split: every output file of
    the demo's three datasets has the bytes recorded before `split_parameters.key` existed."""
    import json

    from cellcorpus.demo import make_demo_atlas
    from cellcorpus.pipeline import DEMO_CONFIGS, packaged_config, run_pipeline
    from tests._utils import output_digests

    out = tmp_path / "demo"
    make_demo_atlas(out)
    for name in [n for n in DEMO_CONFIGS if n.startswith("tahoe_x1_v2/")]:  # (the Geneformer corpus came later)
        cfg = load_config(packaged_config(name), [f"output_root={out}", "huggingface.split_parameters.key=id"])
        assert cfg.huggingface.split_parameters.key == "id"
        list(run_pipeline(cfg))
    stored = json.loads((Path(__file__).parents[1] / "data" / "demo_output_digests_key_id.json").read_text())
    assert output_digests(out) == stored


def test_the_two_tahoe_routes_hold_out_the_same_cells(tmp_path, write_config):
    """The same Tahoe cells from the Hugging Face release's parquet files and from per-plate h5ad files (obs
    index = BARCODE_SUB_LIB_ID, as in the plates): with the shipped configs' key [index, sample] both routes
    put the same cells in valid; with `id` (file, row) they did not (issue 22: 0 of ~30 in common)."""
    import pyarrow.parquet as pq

    from tests._release import make_release

    release = tmp_path / "release"
    tables = make_release(release, n_files=2, cells_per_file=150)
    gene_table = tables["gene_metadata"]
    ensembl = [e.split(".")[0] for e in gene_table["ensembl_id"]]
    by_token = dict(zip(gene_table["token_id"], range(len(ensembl)), strict=True))
    valid: dict[tuple[str, str], set[str]] = {}
    for key in (["index", "sample"], "id"):
        for route in ("parquet", "h5ad"):
            root = tmp_path / f"{route}-{key if isinstance(key, str) else 'content'}"
            write_vocab(root / "vocab" / "vocab.json", genes=ensembl)
            settings = {"huggingface.split_parameters.key": key, "huggingface.split_parameters.test_size": 0.2,
                        "huggingface.obs_metadata_columns": ["sample"]}  # fmt: skip
            if route == "parquet":
                settings["huggingface.input_format"] = "tahoe_parquet"
                settings["huggingface.adata_dir"] = str(release / "data")
                settings["huggingface.parquet_gene_table"] = str(release / "metadata" / "gene_metadata.parquet")
            else:  # one h5ad per plate, its rows in another order than the release's
                for f, path in enumerate(sorted((release / "data").glob("*.parquet"))):
                    t = pq.read_table(path).to_pandas().iloc[::-1]
                    m = sp.lil_matrix((len(t), len(ensembl)), dtype=np.float32)
                    for i, (g, e) in enumerate(zip(t["genes"], t["expressions"], strict=True)):
                        m[i, [by_token[x] for x in g[1:]]] = e[1:]  # the release's CLS first, then the genes
                    obs = {"sample": list(t["sample"])}
                    make_h5ad(root / "raw" / f"plate{f + 1}.h5ad", m.tocsr(), ensembl, obs,
                              obs_index=list(t["BARCODE_SUB_LIB_ID"]))  # fmt: skip
            cfg = load_config(write_config(root, **settings))
            run_tokenize(cfg)
            kept = {r["index"] for s in ("train", "valid") for r in arrow_rows(root / "merged" / f"{s}.dataset")}
            assert len(kept) == 300
            valid[(route, str(key))] = {r["index"] for r in arrow_rows(root / "merged" / "valid.dataset")}
    content = "['index', 'sample']"
    assert valid[("parquet", content)] == valid[("h5ad", content)] and 30 < len(valid[("parquet", content)]) < 90
    assert valid[("parquet", "id")] != valid[("h5ad", "id")]


def _donor_layout(root: Path, order: np.ndarray, n_files: int, donors: list[str]) -> None:
    m, barcodes, _ = _cells()
    write_vocab(root / "vocab" / "vocab.json")
    for k, rows in enumerate(np.array_split(order, n_files)):
        obs = {"donor_id": [donors[r] for r in rows]}
        make_h5ad(root / "raw" / f"part{k}.h5ad", m[rows], GENES, obs, obs_index=[barcodes[r] for r in rows])


def test_split_by_holds_out_whole_groups_whatever_the_file_order(tmp_path, write_config):
    """`split_parameters.by`: valid holds whole donors, chosen from the seed and the donors' names and sizes
    (not from file order), until it holds test_size of the input cells; the manifest and the report list
    them with the cells written of each."""
    import json

    from cellcorpus.core.split import choose_groups
    from cellcorpus.stages.report import run_report

    rng = np.random.default_rng(5)
    donors = [f"donor{int(d):02d}" for d in rng.integers(0, 30, N)]
    sizes = {d: donors.count(d) for d in set(donors)}
    want = choose_groups(sizes, 0.2, 42)
    assert 0 < len(want) < len(sizes)
    held: list[dict] = []
    for name, order, n_files in (("a", np.arange(N), 1), ("b", rng.permutation(N), 4)):
        root = tmp_path / name
        _donor_layout(root, order, n_files, donors)
        settings = {"huggingface.split_parameters.by": "donor_id", "huggingface.split_parameters.test_size": 0.2,
                    "huggingface.obs_metadata_columns": ["donor_id"]}  # fmt: skip
        cfg = load_config(write_config(root, **settings))
        run_tokenize(cfg)
        train = arrow_rows(root / "merged" / "train.dataset")
        valid = arrow_rows(root / "merged" / "valid.dataset")
        assert {r["donor_id"] for r in valid} == set(want)  # every chosen donor, and only those
        assert not {r["donor_id"] for r in train} & set(want)  # none of them in train
        manifest = json.loads((root / "merged" / "manifest.json").read_text())
        assert manifest["held_out_groups"] == {d: sum(r["donor_id"] == d for r in valid) for d in want}
        held.append(manifest["held_out_groups"])
        run_report(cfg)
        stats = json.loads((root / "merged" / "report" / "stats.json").read_text())
        assert stats["held_out_groups"] == {"by": "donor_id", "groups": manifest["held_out_groups"]}
        assert "whole group(s) of <code>donor_id</code>" in (root / "merged" / "report" / "report.html").read_text()
    assert held[0] == held[1]


def test_split_by_says_when_whole_groups_cannot_meet_test_size(tmp_path, write_config):
    donors = ["big"] * 400 + [f"small{i}" for i in range(200)]
    _donor_layout(tmp_path, np.arange(N), 1, donors)
    settings = {"huggingface.split_parameters.by": "donor_id", "huggingface.split_parameters.test_size": 0.1}
    summary = run_tokenize(load_config(write_config(tmp_path, **settings)))
    assert any(
        "group donor_id='big' holds 400 cells, more than the valid fraction (60 of 600)" in n for n in summary.notes
    )


def test_split_by_and_key_are_one_rule_each(tmp_path, write_config):
    both = {"huggingface.split_parameters.by": "donor_id", "huggingface.split_parameters.key": ["index"]}
    with pytest.raises(ConfigError, match=r"`by` \(whole groups\) and `key` \(each cell\)"):
        load_config(write_config(tmp_path, **both))


def test_a_repeat_among_dropped_cells_is_not_an_error(tmp_path, write_config):
    """The key must identify the corpus' cells: a repeat where one of the two rows is filtered out is allowed, in a
    unit as across units (it used to stop a unit whatever the filters did)."""
    m, barcodes, samples = _cells()
    write_vocab(tmp_path / "vocab" / "vocab.json")
    barcodes[7], samples[7] = barcodes[3], samples[3]
    status = ["full"] * N
    status[7] = "minimal"
    make_h5ad(tmp_path / "raw" / "p.h5ad", m, GENES, {"sample": samples, "status": status}, obs_index=barcodes)
    settings = {"huggingface.split_parameters.key": ["index", "sample"],
                "huggingface.obs_filter": {"key": "status", "value": "full"}}  # fmt: skip
    done = run_tokenize(load_config(write_config(tmp_path, **settings)))
    assert done.counts["filtered_obs_filter"] == 1


def test_equal_pairs_finds_every_repeated_value():
    from cellcorpus.core.split import equal_pairs

    keys = np.array([5, 1, 5, 9, 1, 5], dtype=np.uint64)
    assert equal_pairs(keys).tolist() == [[1, 4], [0, 2], [2, 5]]
    assert equal_pairs(np.array([3, 2, 1])).shape == (0, 2)
