"""tokenize stage on hand-built h5ad files: exact tokens, filters, joins, split, shuffle, resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from cellcorpus.config import load_config
from cellcorpus.core.ids import decode_ids
from cellcorpus.errors import ConfigError, InputError, UnitFailed
from cellcorpus.stages import tokenize as tok
from cellcorpus.stages.tokenize import run_tokenize
from tests._utils import GENES, arrow_rows, data_bytes, make_h5ad, random_corpus, write_vocab

# columns: ENSG..3 (versioned) -> 5, ENSG..1 -> 3, OOV, ENSG..5 -> 7
VAR = [GENES[2] + ".4", GENES[0], "ENSG99999999999", GENES[4]]
X = np.array([[1, 0, 7, 2], [0, 0, 0, 4], [0, 3, 0, 0], [2, 2, 2, 2]], dtype=np.float32)
EXPECTED = {
    0: ([1, 5, 7], [-2.0, 1.0, 2.0]),
    1: ([1, 7], [-2.0, 4.0]),
    2: ([1, 3], [-2.0, 3.0]),
    3: ([1, 5, 3, 7], [-2.0, 2.0, 2.0, 2.0]),
}


def _run(path, **kw):
    return run_tokenize(load_config(path), **kw)


# A handful of cells rarely lands one in a 20% valid split, and an empty split is an error: tiny inputs go
# all to train (test_size 0, and so no 'valid' MDS split either).
ALL_TRAIN = ["huggingface.split_parameters.test_size=0", "mds.splits=[train]"]


def _run_tiny(path, **kw):
    return run_tokenize(load_config(path, ALL_TRAIN), **kw)


def _all_rows(root):
    return arrow_rows(root / "merged" / "train.dataset") + arrow_rows(root / "merged" / "valid.dataset")


@pytest.mark.parametrize("fmt", ["csr", "csc", "dense"])
@pytest.mark.parametrize("dtype", [np.float32, np.int32])
def test_exact_tokens(tmp_path, tiny_vocab, write_config, fmt, dtype):
    make_h5ad(tmp_path / "raw" / "a.h5ad", X.astype(dtype), VAR, fmt=fmt)
    s = _run_tiny(write_config())
    rows = {decode_ids(np.array([r["id"]]))[1][0]: r for r in _all_rows(tmp_path)}
    assert {k: (r["genes"], r["expressions"]) for k, r in rows.items()} == EXPECTED
    assert s.counts["cells_read"] == 4 and s.counts["oov_entries_dropped"] == 2
    assert rows[0]["index"] == "cell0"  # add_obs_index default: the obs index is a metadata column


def test_explicit_zeros_dropped_and_counted(tmp_path, tiny_vocab, write_config):
    m = sp.csr_matrix((np.array([0.0, 5.0, 0.0], np.float32), np.array([0, 3, 1]), np.array([0, 2, 3])), shape=(2, 4))
    make_h5ad(tmp_path / "raw" / "a.h5ad", m, VAR)
    s = _run_tiny(write_config())
    rows = sorted(_all_rows(tmp_path), key=lambda r: r["id"])
    # cell 1 holds only an explicit zero: no gene left, so it is dropped (a lone <cls> stops Tahoe-x1 training)
    assert [r["genes"] for r in rows] == [[1, 7]]
    assert s.counts["explicit_zeros_dropped"] == 2 and s.counts["filtered_min_vocab_genes"] == 1


def test_cells_without_vocab_genes_dropped_by_default_kept_on_request(tmp_path, tiny_vocab, write_config):
    # cell 1 has only an out-of-vocabulary gene, cell 2 nothing at all
    X2 = np.array([[1, 0, 0, 0], [0, 0, 5, 0], [0, 0, 0, 0]], dtype=np.float32)
    make_h5ad(tmp_path / "raw" / "a.h5ad", X2, VAR)
    s = _run_tiny(write_config())
    assert [r["genes"] for r in _all_rows(tmp_path)] == [[1, 5]]
    assert s.counts["filtered_min_vocab_genes"] == 2 and s.counts["written_train"] == 1
    assert s.counts["cells_read"] == 3
    s = _run_tiny(
        write_config(
            tmp_path / "keep",
            **{
                "huggingface.min_vocab_genes": 0,
                "huggingface.adata_dir": str(tmp_path / "raw"),
                "huggingface.vocab_output_root": str(tmp_path / "vocab"),
            },
        )
    )
    assert sorted(r["genes"] for r in _all_rows(tmp_path / "keep")) == [[1], [1], [1, 5]]
    assert s.counts["filtered_min_vocab_genes"] == 0


def test_obs_filter_min_genes_min_counts_counted(tmp_path, tiny_vocab, write_config):
    obs = {"pass_filter": pd.Categorical(["full", "full", "minimal", "full"])}
    make_h5ad(tmp_path / "raw" / "a.h5ad", X, VAR, obs)
    # cell1: 1 gene, 4 counts; cell2 filtered by obs; cell0: 3 genes (incl. OOV), 10 counts; cell3: 4 genes, 8
    s = _run_tiny(
        write_config(
            **{
                "huggingface.obs_filter": {"key": "pass_filter", "value": "full"},
                "huggingface.filter_cells": {"min_genes": 2, "min_counts": 9},
            }
        )
    )
    assert s.counts["filtered_obs_filter"] == 1
    assert s.counts["filtered_min_genes"] == 1
    assert s.counts["filtered_min_counts"] == 1
    assert [decode_ids(np.array([r["id"]]))[1][0] for r in _all_rows(tmp_path)] == [0]
    assert s.counts["written_train"] + s.counts["written_valid"] == 1


def test_filter_that_leaves_no_cells_is_an_error(tmp_path, tiny_vocab, write_config):
    make_h5ad(tmp_path / "raw" / "a.h5ad", X, VAR)
    with pytest.raises(InputError, match="no cells left after filters"):
        _run(write_config(**{"huggingface.filter_cells": {"min_counts": 1000}}))
    assert not (tmp_path / "merged" / "train.dataset" / "state.json").exists()


def test_metadata_join_semantics(tmp_path, tiny_vocab, write_config):
    obs = {"drug": pd.Categorical(["A", " B", "C", "A"]), "plate": np.array([1, 2, 3, 4])}
    make_h5ad(tmp_path / "raw" / "a.h5ad", X, VAR, obs)
    table = tmp_path / "drugs.csv"
    pd.DataFrame({"drug": ["A ", "B", "A"], "moa": ["m1", "m2", "DUP"], "smiles": ["s1", "", "DUP"]}).to_csv(
        table, index=False
    )
    cfg = write_config(
        **{
            "huggingface.obs_metadata_columns": ["drug", "plate"],
            "huggingface.add_obs_index": False,
            "huggingface.additional_metadata_info": [
                {
                    "path": str(table),
                    "merge_keys": {"metadata_key": "drug", "adata_key": "drug"},
                    "columns": ["moa", "smiles"],
                }
            ],
        }
    )
    _run_tiny(cfg)
    rows = sorted(_all_rows(tmp_path), key=lambda r: r["id"])
    got = [(r["drug"], r["plate"], r["moa"], r["smiles"]) for r in rows]
    # stripped keys match, first duplicate kept, unmatched -> "", numbers as text
    assert got == [("A", "1", "m1", "s1"), (" B", "2", "m2", ""), ("C", "3", "", ""), ("A", "4", "m1", "s1")]
    assert "index" not in rows[0]


def test_join_table_without_key_column_is_clear_error(tmp_path, tiny_vocab, write_config):
    make_h5ad(tmp_path / "raw" / "a.h5ad", X, VAR, {"drug": ["A"] * 4})
    table = tmp_path / "drugs.csv"
    pd.DataFrame({"name": ["A"], "moa": ["m"]}).to_csv(table, index=False)
    cfg = write_config(
        **{
            "huggingface.additional_metadata_info": [
                {"path": str(table), "merge_keys": {"metadata_key": "drug", "adata_key": "drug"}, "columns": ["moa"]}
            ]
        }
    )
    with pytest.raises(
        ConfigError, match=r"additional_metadata_info.0: .*drugs\.csv: metadata table has no column\(s\) \['drug'\]"
    ):
        _run_tiny(cfg)


def test_parquet_join_table(tmp_path, tiny_vocab, write_config):
    make_h5ad(tmp_path / "raw" / "a.h5ad", X, VAR, {"srx": ["S1", "S2", "S1", "S9"]})
    table = tmp_path / "meta.parquet"
    pd.DataFrame({"srx_accession": ["S1", "S2"], "tissue": ["lung", "blood"]}).to_parquet(table)
    cfg = write_config(
        **{
            "huggingface.additional_metadata_info": [
                {
                    "path": str(table),
                    "merge_keys": {"metadata_key": "srx_accession", "adata_key": "srx"},
                    "columns": ["tissue"],
                }
            ]
        }
    )
    _run_tiny(cfg)
    rows = sorted(_all_rows(tmp_path), key=lambda r: r["id"])
    assert [r["tissue"] for r in rows] == ["lung", "blood", "lung", ""]


@pytest.mark.parametrize("num_proc", [1, 2])
def test_a_large_join_table_is_indexed_on_disk_with_the_same_outputs(tmp_path, tiny_vocab, write_config, monkeypatch,
                                                                     num_proc):  # fmt: skip
    """Over `INDEX_ROWS` rows a parquet join table is indexed once on disk and looked up per unit (never loaded
    whole in a worker): the datasets are byte for byte those of the in-memory join, and the index is removed."""
    from cellcorpus.io import join_index

    rng = np.random.default_rng(3)
    srx = [f"S{i}" for i in rng.integers(0, 60, 40)]
    make_h5ad(tmp_path / "raw" / "a.h5ad", sp.csr_matrix(rng.integers(0, 4, (40, 4)).astype(np.float32)), VAR,
              {"srx": srx})  # fmt: skip
    table = tmp_path / "meta.parquet"
    pd.DataFrame({"srx_accession": [f"S{i}" for i in range(50)], "tissue": [f"t{i % 7}" for i in range(50)],
                  "depth": [float(i) if i % 9 else None for i in range(50)]}).to_parquet(table)  # fmt: skip
    join = {"path": str(table), "merge_keys": {"metadata_key": "srx_accession", "adata_key": "srx"},
            "columns": ["tissue", "depth"]}  # fmt: skip
    outputs = {}
    for case, rows in (("in memory", join_index.INDEX_ROWS), ("indexed", 10)):
        monkeypatch.setattr(join_index, "INDEX_ROWS", rows)
        if case == "indexed":  # (inline units, num_proc 1: the table is never loaded whole, in any process)
            monkeypatch.setattr(tok, "load_table", lambda *a: pytest.fail("the large table was loaded whole"))
            monkeypatch.setattr("cellcorpus.stages.preflight.load_table", tok.load_table)
        root = tmp_path / case.replace(" ", "_")
        cfg = write_config(**{"huggingface.additional_metadata_info": [join], "huggingface.num_proc": num_proc,
                              "huggingface.output_root": str(root / "work"),
                              "huggingface.merged_dataset_root": str(root / "merged")})  # fmt: skip
        _run_tiny(cfg)
        outputs[case] = data_bytes(root / "merged" / "train.dataset")
        assert not (root / "work" / "joins").exists()
    assert outputs["indexed"] == outputs["in memory"]
    tissues = [r["tissue"] for r in arrow_rows(tmp_path / "indexed" / "merged" / "train.dataset")]
    assert "" in tissues and "t1" in tissues  # keys past the table's 50 rows are unmatched


def _many_cells(root, n_files=3, n=400, seed=0):
    """Vocabulary + 3 files of random counts in two sub-folders (sorted listing: sub0/f0, sub0/f2, sub1/f1)."""
    write_vocab(root / "vocab" / "vocab.json")
    rng = np.random.default_rng(seed)
    for f in range(n_files):
        m = sp.random(n, 4, density=0.6, random_state=rng, format="csr", dtype=np.float32)
        m.data = np.ceil(m.data * 10)
        make_h5ad(root / "raw" / f"sub{f % 2}" / f"f{f}.h5ad", m, VAR, {"grp": [f"g{i % 3}" for i in range(n)]})


def test_conservation_ids_and_counts(tmp_path, tiny_vocab, write_config):
    _many_cells(tmp_path)
    s = _run(write_config(**{"huggingface.unit_cells": 150, "huggingface.filter_cells": {"min_genes": 2}}))
    c = s.counts
    assert c["cells_read"] == 1200
    assert c["cells_read"] == c["filtered_min_genes"] + c["written_train"] + c["written_valid"]
    rows = _all_rows(tmp_path)
    ids = np.array([r["id"] for r in rows])
    assert len(set(ids.tolist())) == len(ids)
    files, row_in_file = decode_ids(ids)
    manifest = json.loads((tmp_path / "merged" / "manifest.json").read_text())
    paths = {f["file_index"]: f["path"] for f in manifest["inputs"]}
    assert paths == {0: "sub0/f0.h5ad", 1: "sub0/f2.h5ad", 2: "sub1/f1.h5ad"}  # sorted listing
    import anndata as ad

    for fi in range(3):
        a = ad.read_h5ad(tmp_path / "raw" / paths[fi])
        Xd = a.X.toarray()
        in_vocab = np.array([True, True, False, True])
        for r in (r for r, f in zip(rows, files, strict=True) if f == fi):
            row = decode_ids(np.array([r["id"]]))[1][0]
            assert sum(r["expressions"][1:]) == pytest.approx(Xd[row, in_vocab].sum())
    assert 0 < c["written_valid"] < c["written_train"]
    assert [u["unit_id"] for u in manifest["units"]][:3] == [
        "f00000-r0000000000",
        "f00000-r0000000150",
        "f00000-r0000000300",
    ]


def test_split_independent_of_chunking_and_num_proc(tmp_path, write_config):
    outs = {}
    for name, unit_cells, num_proc in (("a", 1000, 1), ("b", 70, 1), ("c", 70, 2)):
        root = tmp_path / name
        _many_cells(root)
        _run(write_config(root, **{"huggingface.unit_cells": unit_cells, "huggingface.num_proc": num_proc}))
        outs[name] = {
            s: sorted(r["id"] for r in arrow_rows(root / "merged" / f"{s}.dataset")) for s in ("train", "valid")
        }
    assert outs["a"] == outs["b"] == outs["c"]
    assert data_bytes(tmp_path / "b" / "merged" / "train.dataset") == data_bytes(
        tmp_path / "c" / "merged" / "train.dataset"
    )


def test_shuffle_is_seeded_global_order_and_keeps_cells(tmp_path, write_config):
    orders = {}
    for name, seed, unit_cells, shuffle in (("a", 1, 1000, True), ("b", 1, 90, True), ("c", 2, 90, True),
                                            ("plain", 1, 90, False)):  # fmt: skip
        root = tmp_path / name
        _many_cells(root)
        split = {"test_size": 0.2, "seed": seed, "shuffle": shuffle}
        settings = {"huggingface.unit_cells": unit_cells, "huggingface.shuffle_bucket_cells": 250}
        _run(write_config(root, **settings, **{"huggingface.split_parameters": split}))
        orders[name] = [(r["id"], tuple(r["genes"])) for r in arrow_rows(root / "merged" / "train.dataset")]
    assert orders["a"] == orders["b"]  # same seed: same order whatever the chunking
    assert sorted(orders["a"]) == sorted(orders["plain"])  # the same cells (and tokens) as unshuffled
    assert orders["a"] != orders["plain"]  # ... in another order
    assert orders["c"] != orders["a"]  # another seed: another split and order
    files = sorted((tmp_path / "a" / "merged" / "train.dataset").glob("data-*.arrow"))
    assert len(files) == 4  # ~960 train cells / 250 per bucket
    assert not (tmp_path / "a" / "work" / "parts").exists()  # intermediates removed


def test_shuffled_counts_are_exact_whether_or_not_parts_hold_them_in_16_bits(tmp_path, write_config, monkeypatch):
    # parts narrow a unit's counts to int16 only when all are whole and <= 32,767: big, fractional and
    # ordinary units shuffled together give exactly the unshuffled run's cells
    narrowed = []
    real = tok.compact_part
    monkeypatch.setattr(tok, "compact_part", lambda t, n: (narrowed.append("expressions" in n), real(t, n))[1])
    rows = {}
    for name, shuffle in (("shuffled", True), ("plain", False)):
        root = tmp_path / name
        write_vocab(root / "vocab" / "vocab.json")
        rng = np.random.default_rng(5)
        for f, values in enumerate(([3.0, 32_767.0], [40_000.0, 1.0], [0.5, 2.0])):
            m = sp.random(60, len(GENES), density=0.6, random_state=rng, format="csr", dtype=np.float32)
            m.data = rng.choice(values, m.nnz).astype(np.float32)
            make_h5ad(root / "raw" / f"f{f}.h5ad", m, GENES)
        split = {"test_size": 0.2, "seed": 7, "shuffle": shuffle}
        _run(write_config(root, **{"huggingface.unit_cells": 30, "huggingface.split_parameters": split}))
        rows[name] = sorted((r["id"], tuple(r["genes"]), tuple(r["expressions"])) for r in _all_rows(root))
    assert narrowed.count(True) == 2 and narrowed.count(False) == 4  # f0's two units narrowed, f1's and f2's not
    assert rows["shuffled"] == rows["plain"]
    values = {v for _, _, e in rows["plain"] for v in e[1:]}
    assert values == {3.0, 32_767.0, 40_000.0, 1.0, 0.5, 2.0}


def test_resume_after_failure_is_byte_identical_and_rerun_does_nothing(tmp_path, write_config, monkeypatch):
    for name in ("clean", "crash"):
        _many_cells(tmp_path / name)
    shuffled = {"huggingface.unit_cells": 100, "huggingface.shuffle_bucket_cells": 300,
                "huggingface.split_parameters": {"test_size": 0.2, "seed": 3, "shuffle": True}}  # fmt: skip
    _run(write_config(tmp_path / "clean", **shuffled))
    cfg = write_config(tmp_path / "crash", **shuffled)
    real = tok.tokenize_unit
    calls = []

    def flaky(unit, ctx):
        calls.append(unit.unit_id)
        if unit.unit_id == "f00001-r0000000200":
            raise RuntimeError("injected crash")
        return real(unit, ctx)

    monkeypatch.setattr(tok, "tokenize_unit", flaky)
    with pytest.raises(UnitFailed, match=r"unit f00001-r0000000200 .*f2\.h5ad.*injected crash"):
        _run(cfg)
    assert not (tmp_path / "crash" / "merged" / "train.dataset" / "state.json").exists()
    n_before = len(calls)
    monkeypatch.setattr(tok, "tokenize_unit", lambda u, c: (calls.append(u.unit_id), real(u, c))[1])
    _run(cfg)
    assert len(calls) - n_before == 12 - (n_before - 1)  # only the units not finished before
    for split in ("train", "valid"):
        assert data_bytes(tmp_path / "clean" / "merged" / f"{split}.dataset") == data_bytes(
            tmp_path / "crash" / "merged" / f"{split}.dataset"
        )
    n_calls = len(calls)
    again = _run(cfg)
    assert again.skipped and len(calls) == n_calls


def test_config_change_with_leftover_work_is_refused(tmp_path, tiny_vocab, write_config, monkeypatch):
    _many_cells(tmp_path, n_files=1)

    def boom(unit, ctx):
        raise RuntimeError("stop")

    real = tok.tokenize_unit
    monkeypatch.setattr(tok, "tokenize_unit", lambda u, c: real(u, c) if u.row_start == 0 else boom(u, c))
    with pytest.raises(UnitFailed):
        _run(write_config(**{"huggingface.unit_cells": 100}))
    monkeypatch.setattr(tok, "tokenize_unit", real)
    with pytest.raises(ConfigError, match="different config"):
        _run(write_config(**{"huggingface.unit_cells": 100, "huggingface.pad_value": -1}))


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.array([[1.0, np.nan, 0, 0]] * 2, np.float32), r"a\.h5ad rows 0-2: 2 NaN"),
        (np.array([[1.0, -2, 0, 0]] * 2, np.float32), r"a\.h5ad rows 0-2: 2 negative"),
    ],
)
def test_bad_counts_name_file_and_rows(tmp_path, tiny_vocab, write_config, bad, message):
    make_h5ad(tmp_path / "raw" / "a.h5ad", bad, VAR)
    with pytest.raises(UnitFailed, match=message):
        _run(write_config())


def test_column_index_outside_var_names_file_and_rows(tmp_path, tiny_vocab, write_config):
    import h5py

    p = make_h5ad(tmp_path / "raw" / "a.h5ad", X, VAR)
    with h5py.File(p, "r+") as f:
        f["X"]["indices"][1] = 4  # var has 4 genes: columns 0-3
    with pytest.raises(UnitFailed, match=r"a\.h5ad rows 0-4: a stored column index is outside the file's 4 genes"):
        _run(write_config())


def test_corrupt_and_empty_files_are_named(tmp_path, tiny_vocab, write_config):
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "broken.h5ad").write_bytes(b"not hdf5 at all")
    with pytest.raises(InputError, match=r"broken\.h5ad: not a readable \.h5ad"):
        _run(write_config())
    (tmp_path / "raw" / "broken.h5ad").unlink()
    make_h5ad(tmp_path / "raw" / "empty.h5ad", np.zeros((0, 4), np.float32), VAR)
    with pytest.raises(InputError, match=r"empty\.h5ad: file has no cells"):
        _run(write_config())


def test_truncated_file_is_named(tmp_path, tiny_vocab, write_config):
    p = make_h5ad(tmp_path / "raw" / "a.h5ad", X, VAR)
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    with pytest.raises(InputError, match=r"a\.h5ad: not a readable"):
        _run(write_config())


def test_missing_columns_and_paths(tmp_path, tiny_vocab, write_config):
    make_h5ad(tmp_path / "raw" / "a.h5ad", X, VAR)
    with pytest.raises(ConfigError, match=r"huggingface.gene_col: 'feature_id' is not a var column of .*a.h5ad"):
        _run_tiny(write_config(**{"huggingface.gene_col": "feature_id"}))
    with pytest.raises(ConfigError, match=r"obs_metadata_columns.0: 'drug' is not an obs column of .*a.h5ad"):
        _run_tiny(write_config(**{"huggingface.obs_metadata_columns": ["drug"]}))
    assert not (tmp_path / "work" / "parts").exists()  # found before any unit ran
    with pytest.raises(ConfigError, match="adata_dir: folder not found"):
        _run(write_config(**{"huggingface.adata_dir": str(tmp_path / "nope")}))
    with pytest.raises(ConfigError, match="additional_metadata_info.0.path: file not found"):
        _run(
            write_config(
                **{
                    "huggingface.additional_metadata_info": [
                        {"path": "/nope.csv", "merge_keys": {"metadata_key": "a", "adata_key": "b"}, "columns": ["c"]}
                    ]
                }
            )
        )


def test_missing_vocab_and_unknown_cls(tmp_path, write_config):
    make_h5ad(tmp_path / "raw" / "a.h5ad", X, VAR)
    with pytest.raises(ConfigError, match="run `cellcorpus vocab"):
        _run(write_config())
    from tests._utils import write_vocab

    write_vocab(tmp_path / "vocab" / "vocab.json", specials=["<pad>"])
    with pytest.raises(ConfigError, match="cls_token: '<cls>' is not in the vocabulary"):
        _run(write_config())


def test_duplicate_gene_ids_in_file_rejected(tmp_path, tiny_vocab, write_config):
    make_h5ad(tmp_path / "raw" / "a.h5ad", X, [GENES[0], GENES[0] + ".2", GENES[1], GENES[2]])
    with pytest.raises(UnitFailed, match="duplicated gene ids"):
        _run(write_config())


def test_ignore_dir_and_gz_inputs(tmp_path, tiny_vocab, write_config):
    import gzip

    p = make_h5ad(tmp_path / "raw" / "keep" / "a.h5ad", X, VAR)
    make_h5ad(tmp_path / "raw" / "skip" / "b.h5ad", X, VAR)
    gz = tmp_path / "raw" / "keep" / "c.h5ad.gz"
    gz.write_bytes(gzip.compress(p.read_bytes()))
    s = _run_tiny(write_config(**{"huggingface.ignore_dir": ["skip"]}))
    assert s.counts["cells_read"] == 8
    manifest = json.loads((tmp_path / "merged" / "manifest.json").read_text())
    assert [f["path"] for f in manifest["inputs"]] == ["keep/a.h5ad", "keep/c.h5ad.gz"]


def test_hf_datasets_loads_output(tmp_path, tiny_vocab, write_config):
    datasets = pytest.importorskip("datasets")
    make_h5ad(tmp_path / "raw" / "a.h5ad", X, VAR, {"drug": ["a", "b", "c", "d"]})
    _run_tiny(write_config(**{"huggingface.obs_metadata_columns": ["drug"]}))
    ds = datasets.load_from_disk(str(tmp_path / "merged" / "train.dataset"))
    assert ds.column_names == ["genes", "expressions", "id", "drug", "index"]
    row = ds[0]
    assert row["genes"][0] == 1 and row["expressions"][0] == -2.0
    t = ds.with_format("torch")[0]
    assert str(t["genes"].dtype) == "torch.int64" and str(t["expressions"].dtype) == "torch.float32"


def test_filter_and_join_key_may_be_joined_columns(tmp_path, tiny_vocab, write_config):
    """h5ad input: obs has only the barcode; pass_filter and the sample's plate come from chained joins."""
    make_h5ad(tmp_path / "raw" / "a.h5ad", X, VAR, obs_index=["bc0", "bc1", "bc2", "bc3"])
    obs_table = tmp_path / "obs_metadata.parquet"
    pd.DataFrame(
        {"barcode": ["bc3", "bc2", "bc1", "bc0"], "pass_filter": ["full", "minimal", "full", "full"],
         "sample": ["s2", "s1", "s1", "s1"]}
    ).to_parquet(obs_table)  # fmt: skip
    samples = tmp_path / "samples.csv"
    pd.DataFrame({"sample": ["s1", "s2"], "plate": ["p1", "p2"]}).to_csv(samples, index=False)
    joins = [
        {"path": str(obs_table), "merge_keys": {"metadata_key": "barcode", "adata_key": "index"},
         "columns": ["pass_filter", "sample"]},
        {"path": str(samples), "merge_keys": {"metadata_key": "sample", "adata_key": "sample"}, "columns": ["plate"]},
    ]  # fmt: skip
    s = _run_tiny(
        write_config(
            **{
                "huggingface.additional_metadata_info": joins,
                "huggingface.obs_filter": {"key": "pass_filter", "value": "full"},
                "huggingface.rename_columns": {"plate": "plate_id"},
            }
        )
    )
    assert s.counts["filtered_obs_filter"] == 1
    assert not [n for n in s.notes if "filters nothing" in n]  # it dropped a cell
    # every cell "full": the summary says the join filtered nothing (the Tahoe release's 100M-row obs_metadata)
    pd.DataFrame({"barcode": ["bc3", "bc2", "bc1", "bc0"], "pass_filter": ["full"] * 4,
                  "sample": ["s2", "s1", "s1", "s1"]}).to_parquet(obs_table)  # fmt: skip
    again = run_tokenize(
        load_config(write_config(**{"huggingface.additional_metadata_info": joins,
                                    "huggingface.obs_filter": {"key": "pass_filter", "value": "full"},
                                    "huggingface.output_root": str(tmp_path / "w2"),
                                    "huggingface.merged_dataset_root": str(tmp_path / "m2")}), ALL_TRAIN)
    )  # fmt: skip
    assert again.counts["filtered_obs_filter"] == 0
    assert "obs_filter pass_filter == 'full' (a column of obs_metadata.parquet) dropped no cell: that join filters " \
        "nothing here" in again.notes  # fmt: skip
    rows = sorted(_all_rows(tmp_path), key=lambda r: r["id"])
    assert [(r["index"], r["sample"], r["plate_id"]) for r in rows] == [
        ("bc0", "s1", "p1"),
        ("bc1", "s1", "p1"),
        ("bc3", "s2", "p2"),
    ]


def test_each_input_is_opened_once_to_discover_and_inspect_it(tmp_path, write_config, monkeypatch):
    """Discovery and the per-file checks share one open (over 10^4 remote files: one round trip each)."""
    from cellcorpus.io import h5ad
    from cellcorpus.io.vocab import load_vocab
    from cellcorpus.sources.inputs import discover_and_inspect

    random_corpus(tmp_path, n_files=3, n_cells=20)
    hf = load_config(write_config()).huggingface
    opened = []
    real = h5ad.H5adReader.__init__

    def counting(self, path, *args, **kwargs):
        opened.append(Path(str(path)).name)
        real(self, path, *args, **kwargs)

    monkeypatch.setattr(h5ad.H5adReader, "__init__", counting)
    inputs, report = discover_and_inspect(hf, load_vocab(hf.vocab_file), tmp_path / "decompressed")
    assert sorted(opened) == ["f0.h5ad", "f1.h5ad", "f2.h5ad"]
    assert [f.n_obs for f in inputs] == [20, 20, 20] and set(report.coverage.values()) == {1.0}
