"""mds + verify stages end to end on a small tokenized corpus."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import zstandard

from cellcorpus.config import load_config
from cellcorpus.errors import VerifyError
from cellcorpus.stages.mds import run_mds
from cellcorpus.stages.tokenize import run_tokenize
from cellcorpus.stages.verify import run_verify
from tests._utils import GENES, arrow_rows, random_corpus, write_vocab
from tests.streaming_compat import streaming_dataset

PKL = {"genes": "pkl", "expressions": "pkl", "id": "int64", "drug": "str"}


def _corpus(root: Path, write_config, **overrides):
    random_corpus(root, n_cells=300, seed=1, n_drugs=4)
    settings = {
        "huggingface.unit_cells": 128,
        "huggingface.obs_metadata_columns": ["drug"],
        "mds.size_limit": 1 << 13,
        **overrides,
    }
    cfg = load_config(write_config(root, **settings))
    run_tokenize(cfg)
    return cfg


def _samples(ds):
    return [ds[i] for i in range(len(ds))]


@pytest.mark.parametrize("columns", [PKL, {"genes": "ndarray:int32", "expressions": "ndarray:float32", "id": "int64"}])
def test_streaming_reads_every_sample_like_arrow(tmp_path, write_config, columns):
    cfg = _corpus(tmp_path, write_config, **{"mds.columns": columns})
    s = run_mds(cfg)
    for split in ("train", "valid"):
        rows = arrow_rows(tmp_path / "merged" / f"{split}.dataset")
        ds = streaming_dataset(str(tmp_path / "mds" / split))
        got = _samples(ds)
        assert len(got) == len(rows) == s.counts[f"{split}_written"]
        for g, r in zip(got, rows, strict=True):
            assert int(g["id"]) == r["id"]
            assert np.asarray(g["genes"]).tolist() == r["genes"]
            assert np.asarray(g["expressions"]).tolist() == r["expressions"]
            if "drug" in columns:
                assert g["drug"] == r["drug"]
    assert len(json.loads((tmp_path / "mds" / "train" / "index.json").read_text())["shards"]) > 3
    run_verify(cfg)


def test_min_length_drops_exactly_the_short_cells(tmp_path, write_config):
    cfg = _corpus(tmp_path, write_config, **{"mds.min_length": 4, "mds.columns": PKL})
    s = run_mds(cfg)
    manifest = json.loads((tmp_path / "mds" / "manifest.json").read_text())
    for split in ("train", "valid"):
        rows = arrow_rows(tmp_path / "merged" / f"{split}.dataset")
        short = sum(len(r["genes"]) < 4 for r in rows)
        assert short > 0 or split == "valid"
        assert s.counts[f"{split}_dropped_min_length"] == short == manifest["splits"][split]["dropped_min_length"]
        assert s.counts[f"{split}_written"] == len(rows) - short == manifest["splits"][split]["samples"]
    run_verify(cfg)  # counts agree: MDS = Arrow - min_length drops


def test_num_proc_1_and_2_byte_identical_and_rerun_skips(tmp_path, write_config):
    outs = []
    for name, n in (("a", 1), ("b", 2)):
        cfg = _corpus(tmp_path / name, write_config, **{"mds.num_proc": n, "mds.columns": PKL})
        run_mds(cfg)
        outs.append({p.relative_to(tmp_path / name / "mds").as_posix(): p.read_bytes()
                     for p in sorted((tmp_path / name / "mds").rglob("*")) if p.is_file() and ".units" not in p.parts
                     and p.name != "manifest.json"})  # fmt: skip
    assert outs[0] == outs[1] and any(k.endswith(".mds.zstd") for k in outs[0])
    assert run_mds(cfg).skipped


def _shards(root: Path) -> list[Path]:
    return sorted((root / "mds" / "train").rglob("shard.*.mds.zstd"))


@pytest.fixture
def produced(tmp_path, write_config):
    cfg = _corpus(tmp_path, write_config, **{"mds.columns": PKL})
    run_mds(cfg)
    run_verify(cfg)
    return cfg, tmp_path


@pytest.mark.parametrize("where", ["start", "offsets", "middle", "end"])
def test_verify_names_shard_with_a_flipped_byte(produced, where):
    cfg, root = produced
    shard = _shards(root)[1]
    data = bytearray(shard.read_bytes())
    pos = {"start": 0, "offsets": 10, "middle": len(data) // 2, "end": len(data) - 1}[where]
    data[pos] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(VerifyError, match=rf"mds shard hashes: train/{shard.parent.name}/{shard.name}") as e:
        run_verify(cfg)
    assert e.value.report.checks["mds shard hashes"].failed == 1


def test_verify_checks_the_fastest_listed_hash_unless_all_hashes(produced):
    """Every byte is hashed once by default, by xxh64 of the config's sha1 + xxh64; `--all-hashes` checks both,
    so an index whose sha1 alone is wrong passes the default and fails the full check, naming the shard."""
    cfg, root = produced
    index_path = root / "mds" / "train" / _shards(root)[0].parent.name / "index.json"
    merged_path = root / "mds" / "train" / "index.json"
    for p in (index_path, merged_path):
        index = json.loads(p.read_text())
        entry = index["shards"][0]
        assert set(entry["zip_data"]["hashes"]) == {"sha1", "xxh64"}
        entry["zip_data"]["hashes"]["sha1"] = "0" * 40
        p.write_text(json.dumps(index))
    assert run_verify(cfg).checks["mds shard hashes"].failed == 0
    with pytest.raises(VerifyError, match=r"mds shard hashes: train/\d+/shard\.00000\.mds\.zstd"):
        run_verify(cfg, all_hashes=True)


def test_verify_flags_flipped_raw_byte_when_uncompressed(tmp_path, write_config):
    cfg = _corpus(tmp_path, write_config, **{"mds.columns": PKL, "mds.compression": None})
    run_mds(cfg)
    shard = sorted((tmp_path / "mds" / "train").rglob("shard.*.mds"))[0]
    data = bytearray(shard.read_bytes())
    data[6] ^= 0x01  # inside the offsets table
    shard.write_bytes(bytes(data))
    with pytest.raises(VerifyError, match=shard.name):
        run_verify(cfg)


def test_verify_missing_and_truncated_shard(produced):
    cfg, root = produced
    shards = _shards(root)
    shards[0].write_bytes(shards[0].read_bytes()[:-10])
    shards[2].unlink()
    with pytest.raises(VerifyError) as e:
        run_verify(cfg)
    checks = e.value.report.checks
    assert checks["mds shards present"].failed == 1 and shards[2].name in checks["mds shards present"].first_failure
    assert checks["mds shard hashes"].failed == 1 and shards[0].name in checks["mds shard hashes"].first_failure
    assert checks["cell counts agree (manifest, Arrow, MDS)"].failed >= 1


def test_verify_names_cell_with_token_out_of_range(produced):
    cfg, root = produced
    write_vocab(root / "vocab" / "vocab.json", genes=GENES[:2])  # ids 5..7 now outside a 5-token vocab
    with pytest.raises(
        VerifyError, match=r"token ids in vocabulary: .*cell id \d+: token [567] outside vocabulary of 5"
    ):
        run_verify(cfg)


def test_verify_arrow_checksum_mismatch(produced):
    cfg, root = produced
    f = sorted((root / "merged" / "valid.dataset").glob("data-*.arrow"))[0]
    f.write_bytes(f.read_bytes() + b"\0")
    with pytest.raises(VerifyError, match=rf"arrow checksums: valid/{f.name}"):
        run_verify(cfg)


def test_id_checks_fold_in_file_by_file():
    """Unique and decodable ids are checked as each file's ids arrive (the parent keeps a flag per input row)."""
    from cellcorpus.stages.verify import VerifyReport, _IdTracker

    tracker = _IdTracker({0: 4, 1: 2}, "arrow")
    tracker.add("train/a", np.array([0, 1, 2], np.int64))
    tracker.add("train/b", np.array([3, (1 << 32) | 1, 2], np.int64))  # id 2 again, in another file
    tracker.add("valid/c", np.array([(1 << 32) | 5, (2 << 32) | 0], np.int64))  # row past file 1's end; file 2
    rep = VerifyReport()
    tracker.report(rep)
    unique, valid = rep.checks["arrow ids unique"], rep.checks["arrow ids decode to an input row"]
    assert (unique.checked, unique.failed, unique.first_failure) == (8, 1, "train/b: id 2 repeats")
    assert (valid.checked, valid.failed, valid.first_failure) == (8, 2, f"valid/c: id {(1 << 32) | 5}")


def test_id_checks_agree_with_a_set_over_many_inputs():
    """Shuffled data files hold cells of every input: the bitmap's tallies equal a plain set's, file by file."""
    from cellcorpus.stages.verify import VerifyReport, _IdTracker

    rng = np.random.default_rng(7)
    files, sizes = rng.choice(5_000, 1_000, replace=False), rng.integers(1, 50, 1_000)
    inputs = {int(f): int(n) for f, n in zip(files, sizes, strict=True)}
    tracker = _IdTracker(inputs, "mds")
    seen: set[int] = set()
    want_dup = want_bad = 0
    for k in range(20):
        files = rng.choice(list(inputs), 400)
        rows = rng.integers(0, 55, 400)  # some rows past their file's end
        ids = (files.astype(np.int64) << 32) | rows
        good = [int(i) for i, f, r in zip(ids, files, rows, strict=True) if r < inputs[int(f)]]
        want_bad += len(ids) - len(good)
        uniq, counts = np.unique(good, return_counts=True)
        want_dup += sum(1 for u, c in zip(uniq.tolist(), counts, strict=True) if u in seen or c > 1)
        seen |= set(good)
        tracker.add(f"train/{k}", ids)
    rep = VerifyReport()
    tracker.report(rep)
    assert rep.checks["mds ids unique"].failed == want_dup > 0
    assert rep.checks["mds ids decode to an input row"].failed == want_bad > 0
    assert rep.checks["mds ids unique"].checked == 20 * 400


@pytest.mark.parametrize("damage", [None, "vocabulary", "frame"])
def test_shards_decoded_at_once_report_what_sample_by_sample_decoding_reports(produced, monkeypatch, damage):
    """verify decodes our writer's shards with array operations; the per-sample restricted reader stays for
    anything else. Both give the same checks, counts and first failures (a shrunk vocabulary puts tokens out of
    range); a frame the fast path does not recognise (a foreign pickle, re-hashed) sends the shard to the slow
    path, which names the sample."""
    from cellcorpus.formats.mds import spec
    from cellcorpus.stages import verify

    cfg, root = produced
    if damage == "vocabulary":
        vocab = json.loads(Path(cfg.huggingface.vocab_file).read_text())
        Path(cfg.huggingface.vocab_file).write_text(json.dumps({k: v for k, v in vocab.items() if v < 5}))
    if damage == "frame":  # one sample's genes pickle, a byte changed in its frame; hashes re-forged
        shard = _shards(root)[0]
        raw = bytearray(spec.decompress(shard.read_bytes()))
        at = raw.index(b"_rebuild_tensor_v2")
        raw[at + 1] ^= 0x20
        _forge(shard, bytes(raw))
    reports = []
    for fast in (True, False):
        if fast and damage != "frame":  # every sample decoded at once: the per-sample reader is never called
            monkeypatch.setattr(verify, "decode_value", lambda *a: pytest.fail("decoded sample by sample"))
        if not fast:
            monkeypatch.undo()
            monkeypatch.setattr(verify, "_decode_fast", lambda *a: None)
        try:
            rep = run_verify(cfg)
        except VerifyError as exc:
            rep = exc.report
        reports.append({k: (c.checked, c.failed, c.first_failure) for k, c in rep.checks.items()})
    assert reports[0] == reports[1]
    failed = {k for k, v in reports[0].items() if v[1]}
    frame = {"mds samples decode (no pickle executed)", "cell counts agree (manifest, Arrow, MDS)"}
    assert failed == {None: set(), "vocabulary": {"token ids in vocabulary"}, "frame": frame}[damage]


def _forge(shard: Path, raw: bytes) -> None:
    """Write `raw` compressed into `shard` and record its sizes and hashes in its writer's and the split's index."""
    from cellcorpus.formats.mds import spec

    data = zstandard.ZstdCompressor().compress(raw)
    shard.write_bytes(data)
    for index_path in (shard.parent / "index.json", shard.parent.parent / "index.json"):
        index = json.loads(index_path.read_text())
        for s in index["shards"]:
            name = s["zip_data"]["basename"]
            if name == shard.name or name == f"{shard.parent.name}/{shard.name}":
                for key, blob in (("zip_data", data), ("raw_data", raw)):
                    s[key].update(bytes=len(blob), hashes={a: spec.hash_bytes(a, blob) for a in s[key]["hashes"]})
        index_path.write_text(json.dumps(index))


@pytest.mark.parametrize("genes", ["ndarray", "ndarray:int32", "ndarray:int64"])
def test_verify_reads_an_ndarray_export_the_writer_accepted(tmp_path, write_config, genes):
    """Issue 23: `mds.columns.genes: ndarray` (dtype stored in the sample) was accepted by the writer, then verify
    crashed with IndexError parsing the encoding name itself; it now decodes through formats/mds."""
    columns = {"genes": genes, "expressions": "ndarray:float32", "id": "int64"}
    cfg = _corpus(tmp_path, write_config, **{"mds.columns": columns})
    run_mds(cfg)
    rep = run_verify(cfg)
    assert rep.checks["token ids in vocabulary"].failed == 0
    n_cells = sum(len(arrow_rows(tmp_path / "merged" / f"{s}.dataset")) for s in cfg.mds.splits)
    assert n_cells > 0 and rep.checks["mds samples decode (no pickle executed)"].checked == n_cells


@pytest.mark.parametrize(
    "dtype, bad",
    [(d, b) for d in (np.int32, np.int64) for b in (None, -1, -(2**31), 5)] + [(np.uint16, None), (np.uint16, 5)],
)
def test_token_range_check_finds_negative_and_large_ids(dtype, bad):
    """The one-pass range check (tokens read as unsigned) names a negative id as well as one past the vocabulary,
    for the token dtypes verify sees (MDS int32/int64 as stored, narrow Arrow lists)."""
    from cellcorpus.encodings.base import CellRules
    from cellcorpus.stages.verify import VerifyReport, _cell_checks, _Cells

    tokens = np.array([1, 3, 4, 1, 2], dtype=np.int64)
    if bad is not None:
        tokens[3] = bad
    rep = VerifyReport()
    cells = _Cells(np.array([0, 3, 5]), tokens.astype(dtype), np.array([10, 11]), None, None)
    _cell_checks(rep, "t/x.arrow", cells, CellRules(tokens="genes", vocab_size=5))
    check = rep.checks["token ids in vocabulary"]
    assert (check.checked, check.failed) == (5, 0 if bad is None else 1)
    if bad is not None:
        assert check.first_failure == f"t/x.arrow cell id 11: token {bad} outside vocabulary of 5"
