"""`cellcorpus dedup` on planted duplicates: the same cells in another file, another storage format (CSC),
another gene order, with explicit zeros, and in a second corpus, are all found; scaled counts (the same cell
normalised differently) and distinct cells are not."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
from typer.testing import CliRunner

from cellcorpus.cli import app
from cellcorpus.config import load_config
from cellcorpus.errors import ConfigError, VerifyError
from cellcorpus.formats import duplicates
from cellcorpus.pipeline import run_pipeline
from cellcorpus.stages.dedup import run_dedup
from cellcorpus.stages.tokenize import run_tokenize
from cellcorpus.stages.verify import run_verify
from tests._utils import config_file, make_h5ad, write_vocab

GENES = [f"ENSG{i:011d}" for i in range(1, 31)]


def _atlas(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.integers(1, 50, (n, len(GENES))) * (rng.random((n, len(GENES))) < 0.5)
    x[:, 0] += 1  # no empty cell (two empty cells are the same cell)
    return x.astype(np.float32)


def _with_explicit_zeros(x: np.ndarray) -> sp.csr_matrix:
    m = sp.csr_matrix(x)
    rows, cols = np.nonzero(x == 0)
    z = sp.csr_matrix((np.zeros(len(rows), np.float32), (rows, cols)), shape=x.shape)
    out = sp.csr_matrix((np.concatenate([m.data, z.data]), (np.concatenate([m.tocoo().row, rows]),
                         np.concatenate([m.tocoo().col, cols]))), shape=x.shape)  # fmt: skip
    out.sum_duplicates()  # keeps explicit zeros (only duplicates are summed)
    assert out.nnz == x.size
    return out


def planted(root: Path, with_c: bool = True) -> np.ndarray:
    """a.h5ad: 40 cells, its row 39 a copy of row 20. b.h5ad (CSC, genes reversed): a's rows 0-9. c.h5ad
    (`write_c`); a vocabulary. Returns a's counts."""
    write_vocab(root / "vocab" / "vocab.json", genes=GENES)
    a = _atlas(40, 1)
    a[39] = a[20]
    make_h5ad(root / "raw" / "a.h5ad", a, GENES)
    make_h5ad(root / "raw" / "b.h5ad", a[:10, ::-1], GENES[::-1], fmt="csc")
    if with_c:
        write_c(root, a)
    return a


def write_c(root: Path, a: np.ndarray) -> None:
    """c.h5ad (CSR with explicit zeros, genes reversed): a's rows 10-14, a's rows 15-19 doubled, 10 new cells."""
    c = np.concatenate([a[10:15], 2 * a[15:20], _atlas(10, 2)])[:, ::-1]
    make_h5ad(root / "raw" / "c.h5ad", _with_explicit_zeros(c), GENES[::-1])


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """The planted inputs, built with fingerprints."""
    root = tmp_path_factory.mktemp("dedup")
    a = planted(root)
    cfg = load_config(config_file(root, **{"huggingface.fingerprints": True}))
    run_pipeline(cfg)  # tokenize, mds, verify (the fingerprint files too), report
    return root, cfg, a


def test_every_planted_duplicate_is_found_and_nothing_else(corpus):
    root, cfg, _ = corpus
    rep = run_dedup(cfg)
    assert (rep.cells, rep.groups, rep.duplicate_cells) == (40 + 10 + 20, 16, 16)
    pairs = {(p["input"], p["other_input"]): p["cells"] for p in rep.pairs}
    assert pairs == {("b.h5ad", "a.h5ad"): 10, ("c.h5ad", "a.h5ad"): 5, ("a.h5ad", "a.h5ad"): 1} or pairs == {
        ("a.h5ad", "b.h5ad"): 10,
        ("a.h5ad", "c.h5ad"): 5,
        ("a.h5ad", "a.h5ad"): 1,
    }
    same_file = next(p for p in rep.pairs if p["input"] == p["other_input"])
    assert same_file["example"] == [["a.h5ad", 20], ["a.h5ad", 39]]  # the first occurrence, then its copy
    assert json.loads((root / "merged" / "report" / "dedup.json").read_text())["duplicate_cells"] == 16


def test_against_another_corpus_reads_its_fingerprints(corpus, tmp_path):
    root, cfg, a = corpus
    write_vocab(tmp_path / "vocab" / "vocab.json", genes=GENES)
    make_h5ad(tmp_path / "raw" / "x.h5ad", np.concatenate([a[:5], _atlas(5, 3)]), GENES, fmt="dense")
    other = config_file(tmp_path, **{"huggingface.fingerprints": True})
    run_tokenize(load_config(other))
    rep = run_dedup(cfg, [other], write=False)
    found = rep.against["config"]
    assert found["cells_also_there"] == 10  # a's rows 0-4 and their copies in b
    assert {(p["input"], p["other_input"]): p["cells"] for p in found["pairs"]} == {
        ("a.h5ad", "x.h5ad"): 5,
        ("b.h5ad", "x.h5ad"): 5,
    }
    assert next(p for p in found["pairs"] if p["input"] == "a.h5ad")["example"] == [["a.h5ad", 0], ["x.h5ad", 0]]


def test_partitioned_on_disk_gives_the_same_report(corpus, monkeypatch):
    _, cfg, _ = corpus
    whole = run_dedup(cfg, write=False)
    monkeypatch.setattr(duplicates, "PART_ROWS", 8)  # 70 records -> 16 fingerprint-range partitions
    assert run_dedup(cfg, write=False).as_dict() == whole.as_dict()


def test_cli_and_verify_of_the_recorded_fingerprints(corpus):
    root, cfg, _ = corpus
    res = CliRunner().invoke(app, ["dedup", str(root / "config.yaml")])
    assert res.exit_code == 0, res.output
    assert "16 duplicate cells" in res.output
    run_verify(cfg)  # the fingerprint files are checked as written
    fp = next((root / "merged" / "fingerprints").glob("*.fp"))
    data = bytearray(fp.read_bytes())
    data[-1] ^= 1
    fp.write_bytes(bytes(data))
    try:
        with pytest.raises(VerifyError, match=r"fingerprints: fingerprints/.*\.fp: .* bytes, xxh64"):
            run_verify(cfg)
    finally:
        data[-1] ^= 1
        fp.write_bytes(bytes(data))


def test_a_corpus_without_fingerprints_says_how_to_record_them(tmp_path):
    write_vocab(tmp_path / "vocab" / "vocab.json", genes=GENES)
    make_h5ad(tmp_path / "raw" / "a.h5ad", _atlas(30, 4), GENES)
    cfg = load_config(config_file(tmp_path))
    run_tokenize(cfg)
    with pytest.raises(ConfigError, match="fingerprints were not recorded") as e:
        run_dedup(cfg)
    assert "huggingface.fingerprints: true" in e.value.hint


def test_against_itself_is_refused(corpus):
    root, cfg, _ = corpus
    with pytest.raises(ConfigError, match="that is this corpus itself"):
        run_dedup(cfg, [str(root / "config.yaml")], write=False)


def test_the_duplicates_list_drops_all_but_each_groups_first_cell(corpus, tmp_path):
    """dedup writes report/duplicate_ids.npz; a corpus built with it in huggingface.drop_ids keeps the first cell
    of every group and none of its copies, counted as filtered_listed_ids, and holds no duplicates."""
    import shutil

    from tests._utils import arrow_rows

    root, cfg, _ = corpus
    rep = run_dedup(cfg)
    listed = root / "merged" / rep.id_lists["duplicates"]
    for name in ("raw", "vocab"):
        shutil.copytree(root / name, tmp_path / name)
    drop = {"huggingface.fingerprints": True, "huggingface.drop_ids": [str(listed)]}
    again = load_config(config_file(tmp_path, **drop))
    run_tokenize(again)
    manifest = json.loads((tmp_path / "merged" / "manifest.json").read_text())
    assert manifest["totals"]["filtered_listed_ids"] == 16
    assert manifest["totals"]["written_train"] + manifest["totals"]["written_valid"] == 70 - 16
    kept = {r["id"] for split in ("train", "valid") for r in arrow_rows(tmp_path / "merged" / f"{split}.dataset")}
    assert {i & 0xFFFFFFFF for i in kept if i >> 32 == 0} == set(range(39))  # a.h5ad: all but its copy (row 39)
    assert not {i >> 32 for i in kept} & {1}  # b.h5ad held only copies of a's cells
    assert run_dedup(again, write=False).duplicate_cells == 0


def test_a_drop_list_made_from_other_inputs_is_refused(corpus, tmp_path):
    import shutil

    root, cfg, _ = corpus
    listed = root / "merged" / run_dedup(cfg).id_lists["duplicates"]
    shutil.copytree(root / "vocab", tmp_path / "vocab")
    shutil.copytree(root / "raw", tmp_path / "raw")
    (tmp_path / "raw" / "b.h5ad").rename(tmp_path / "raw" / "b2.h5ad")  # same bytes, another name
    bad = load_config(config_file(tmp_path, **{"huggingface.drop_ids": [str(listed)]}))
    with pytest.raises(ConfigError, match=r"was made from other inputs: input 1 was b\.h5ad, now b2\.h5ad"):
        run_tokenize(bad)


def test_run_finds_the_duplicates_and_the_report_shows_them(corpus):
    """With fingerprints on, `run` runs dedup after verify; the report page has the duplicates' section, and
    only for the build the dedup record belongs to."""
    root, cfg, _ = corpus
    page = (root / "merged" / "report" / "report.html").read_text()
    assert "<h2>Duplicate cells</h2><p>16 of 70 cells repeat another cell of this corpus (16 groups" in page
    stats = json.loads((root / "merged" / "report" / "stats.json").read_text())
    assert stats["duplicates"]["duplicate_cells"] == 16 and stats["duplicates"]["pairs"][0]["cells"] == 10


def test_cell_hash_column_is_the_fingerprint_of_each_cell(tmp_path):
    """huggingface.cell_hash writes each cell's fingerprint (32 hex characters) in Arrow and MDS: equal for the
    same cell in another file and layout, different for a scaled copy; the same value dedup compares."""
    from cellcorpus.formats.fingerprints import read_fingerprints
    from tests._utils import arrow_rows

    write_vocab(tmp_path / "vocab" / "vocab.json", genes=GENES)
    a = _atlas(30, 5)
    make_h5ad(tmp_path / "raw" / "a.h5ad", a, GENES)
    make_h5ad(tmp_path / "raw" / "b.h5ad", np.concatenate([a[:3], 2 * a[3:6]])[:, ::-1], GENES[::-1], fmt="csc")
    on = {"huggingface.cell_hash": True, "huggingface.fingerprints": True, "mds.columns.cell_hash": "str"}
    run_pipeline(load_config(config_file(tmp_path, **on)))  # verify included: the column is in the schema
    rows = [r for s in ("train", "valid") for r in arrow_rows(tmp_path / "merged" / f"{s}.dataset")]
    by_id = {r["id"]: r["cell_hash"] for r in rows}
    assert all(len(h) == 32 and int(h, 16) >= 0 for h in by_id.values())
    assert [by_id[(1 << 32) + k] == by_id[k] for k in range(6)] == [True] * 3 + [False] * 3
    recorded = np.concatenate([read_fingerprints(p) for p in (tmp_path / "merged" / "fingerprints").glob("*.fp")])
    assert {int(r["id"]): f"{int(r['hi']):016x}{int(r['lo']):016x}" for r in recorded} == by_id
    mds_rows = json.loads((tmp_path / "mds" / "manifest.json").read_text())["columns"]
    assert mds_rows["cell_hash"] == "str"


def test_cell_hash_refuses_a_metadata_column_of_that_name(tmp_path):
    with pytest.raises(ConfigError, match="a metadata column is already named 'cell_hash'"):
        load_config(config_file(tmp_path, **{"huggingface.cell_hash": True,
                                             "huggingface.obs_metadata_columns": ["cell_hash"]}))  # fmt: skip


def test_a_rebuild_replaces_the_recorded_fingerprints_and_nothing_else(tmp_path):
    """Inputs changed: the rebuild removes the fingerprint files the old manifest listed and no unit wrote now,
    and leaves a file it never recorded."""
    write_vocab(tmp_path / "vocab" / "vocab.json", genes=GENES)
    for k in range(2):
        make_h5ad(tmp_path / "raw" / f"f{k}.h5ad", _atlas(30, 10 + k), GENES)
    cfg = load_config(config_file(tmp_path, **{"huggingface.fingerprints": True}))
    run_tokenize(cfg)
    folder = tmp_path / "merged" / "fingerprints"
    before = sorted(p.name for p in folder.glob("*.fp"))
    (folder / "mine.fp").write_bytes(b"a user's file")
    (tmp_path / "raw" / "f1.h5ad").unlink()
    run_tokenize(cfg)
    listed = [r["path"] for r in json.loads((tmp_path / "merged" / "manifest.json").read_text())["fingerprints"]]
    assert len(before) == 2 and len(listed) == 1 and listed[0].removeprefix("fingerprints/") in before
    assert sorted(p.name for p in folder.glob("*.fp")) == sorted([Path(listed[0]).name, "mine.fp"])


def test_cli_set_applies_to_the_other_corpora_too(corpus, tmp_path):
    """`--set` overrides every config of the command (as `report` does): the other corpus' config, whose paths
    all derive from an output_root it leaves unset, resolves the same way, here to this very corpus (refused)."""
    import yaml

    root, _, _ = corpus
    text = (root / "config.yaml").read_text().replace(str(root), "${output_root}")
    other = yaml.safe_load(text) | {"output_root": "???"}
    (tmp_path / "other.yaml").write_text(yaml.safe_dump(other))
    args = ["dedup", str(root / "config.yaml"), "--against", str(tmp_path / "other.yaml"), "--set"]
    res = CliRunner().invoke(app, [*args, f"output_root={root}"])
    assert res.exit_code != 0 and "dedup --against other: that is this corpus itself" in res.output
