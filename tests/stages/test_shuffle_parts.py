"""The shuffle's parts: genes and counts kept in 16 bits when they fit, widened back in the datasets."""

from __future__ import annotations

from types import SimpleNamespace
from unittest import mock

import numpy as np
import pyarrow as pa
import pytest

from cellcorpus.core.split import shuffle_keys
from cellcorpus.core.tokenize import CountScan
from cellcorpus.encodings import column_specs
from cellcorpus.encodings.tahoe_x1 import TahoeX1
from cellcorpus.errors import InputError
from cellcorpus.formats.arrow import cell_schema, compact_part, read_arrow, read_stream_ranges, write_stream
from cellcorpus.formats.shuffle_plan import bucket_slices, part_bounds, write_bucket_plan, write_part_bounds
from cellcorpus.io.paths import Publisher
from cellcorpus.stages.tokenize_finalize import ShuffleContext, ShuffleUnit, read_bucket, shuffle_unit


def _cells(n: int, start: int, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    offsets = np.concatenate([[0], np.cumsum(rng.integers(1, 30, n))]).astype(np.int32)
    genes = rng.integers(0, 65_535, offsets[-1]).astype(np.int32)  # up to the 16-bit limit
    counts = rng.integers(-2, 32_768, offsets[-1])  # whole counts up to int16's limit, and the pad value
    cols = [
        pa.ListArray.from_arrays(pa.array(offsets), pa.array(genes)),
        pa.ListArray.from_arrays(pa.array(offsets), pa.array(counts.astype(np.float32))),
        pa.array(np.arange(start, start + n, dtype=np.int64)),
        pa.array([f"d{i % 3}" for i in range(n)]),
    ]
    return pa.Table.from_arrays(cols, schema=cell_schema(TAHOE, ["drug"]))


TAHOE = column_specs(TahoeX1)  # the class attribute: no vocabulary needed


def test_compact_parts_shuffle_to_the_same_bytes_as_wide_ones_even_mixed(tmp_path):
    a, b = _cells(300, 0, 1), _cells(200, 10_000, 2)
    keys = {
        name: np.argsort(shuffle_keys(t.column("id").to_numpy(), 42), kind="stable") for name, t in (("a", a), ("b", b))
    }
    out = {}
    both = {"genes": "uint16", "expressions": "int16"}
    cases = {  # which columns each part narrows; mixed: a unit with counts over 32,767, or resumed across versions
        "wide": {"a": {}, "b": {}},
        "compact": {"a": both, "b": both},
        "mixed": {"a": {"genes": "uint16"}, "b": both},
        "mixed_versions": {"a": {}, "b": both},
    }
    for case, narrow in cases.items():
        parts = []
        for name, t in (("a", a), ("b", b)):
            path = tmp_path / case / f"{name}.arrow"
            n = t.num_rows
            if case == "mixed_versions" and name == "a":  # an earlier version's part: no bucket byte ranges
                write_stream(path, compact_part(t, narrow[name]), rows=keys[name])
                parts.append((str(path), 0, n, -1, -1))
            else:
                written = write_stream(path, compact_part(t, narrow[name]), rows=keys[name], cuts=np.array([0, n]))
                parts.append((str(path), 0, n, *written.cut_bytes))
        if case == "compact":  # 2 bytes a gene, 2 bytes a count
            schema = read_arrow(parts[0][0]).schema
            assert schema.field("genes").type == pa.list_(pa.uint16())
            assert schema.field("expressions").type == pa.list_(pa.int16())
        target = tmp_path / case / "data-00000-of-00001.arrow"
        ctx = ShuffleContext(
            42, TAHOE, ("drug",), str(tmp_path / case), Publisher(str(tmp_path / case), tmp_path), "train"
        )
        plan = tmp_path / case / "shuffle-plan.npy"
        bounds = [np.array(p[1:]).reshape(2, 2).T for p in parts]  # (rows, bytes) at the bucket's two ends
        cells = write_bucket_plan(plan, [p[0] for p in parts], bounds.__getitem__, 1)
        assert cells.tolist() == [500]
        shuffle_unit(ShuffleUnit("train-b00000", str(target), 0, 500, str(plan)), ctx)
        out[case] = target.read_bytes()
    assert out["compact"] == out["wide"] and out["mixed"] == out["wide"] and out["mixed_versions"] == out["wide"]
    got = read_arrow(tmp_path / "wide" / "data-00000-of-00001.arrow")
    assert got.schema == cell_schema(TAHOE, ["drug"])  # int32 genes in the dataset, whatever the parts held
    assert sorted(got.column("id").to_pylist()) == sorted(a.column("id").to_pylist() + b.column("id").to_pylist())


@pytest.mark.parametrize(
    "max_value, n_fractional, pad, add_cls, summed, fits",
    [
        (32_767.0, 0, -2, True, False, True),  # the largest count int16 holds
        (32_768.0, 0, -2, True, False, False),
        (5.0, 1, -2, True, False, False),  # a fractional count
        (5.0, 0, -0.5, True, False, False),  # the pad value written before the counts is fractional
        (5.0, 0, -0.5, False, False, True),  # ... but no CLS, so no pad value is written
        (5.0, 0, -40_000, True, False, False),  # a pad value below int16's range
        (5.0, 0, -2, True, True, False),  # colliding genes' counts were summed: the scan no longer bounds them
    ],
)
def test_counts_narrow_to_int16_only_when_exact(max_value, n_fractional, pad, add_cls, summed, fits):
    hf = SimpleNamespace(pad_value=pad, add_cls_token=add_cls, cls_token="<cls>")
    scan = CountScan(None, n_fractional, 0, max_value)
    narrow = TahoeX1(hf, {"<cls>": 0, "G": 65_535}).narrow(scan, summed)  # type: ignore[arg-type]
    assert ("expressions" in narrow) is fits
    assert narrow.get("genes") == "uint16"  # every id below 65,536


def test_genes_stay_int32_in_parts_when_the_vocabulary_is_larger():
    hf = SimpleNamespace(pad_value=-2, add_cls_token=True, cls_token="<cls>")
    narrow = TahoeX1(hf, {"<cls>": 0, "G": 65_536}).narrow(CountScan(None, 0, 0, 1.0), False)  # type: ignore[arg-type]
    assert "genes" not in narrow


def test_each_bucket_is_read_alone_from_its_own_bytes(tmp_path):
    """A part is written with a batch cut at every bucket bound; a bucket's byte range holds exactly its rows
    (empty buckets too), whatever the batch size, so a shuffle unit reads only its bucket from each part."""
    t = _cells(2_500, 0, 3)
    bounds = np.array([0, 0, 1, 1_000, 1_001, 2_400, 2_500, 2_500])  # empty, 1 row, one batch exactly, ...
    path = tmp_path / "part.arrow"
    written = write_stream(path, t, rows=np.arange(t.num_rows), cuts=bounds)
    assert written.cut_bytes[0] == 0 and written.cut_bytes[-1] < path.stat().st_size  # the stream's end marker
    ranges = [(str(path), written.cut_bytes[b], written.cut_bytes[b + 1]) for b in range(len(bounds) - 1)]
    pieces = read_stream_ranges(ranges)
    for b, piece in enumerate(pieces):
        assert piece.equals(t.slice(bounds[b], bounds[b + 1] - bounds[b])), b
    assert read_arrow(path).equals(t)  # still one ordinary stream file


def test_a_part_changed_since_it_was_recorded_is_named(tmp_path):
    t = _cells(100, 0, 4)
    path = tmp_path / "part.arrow"
    written = write_stream(path, t, rows=np.arange(100), cuts=np.array([0, 40, 100]))
    with pytest.raises(InputError, match=r"part\.arrow: bucket 1 holds 60 rows, 50 recorded"):
        read_bucket([(str(path), 40, 90, *written.cut_bytes[1:])], 1)


def test_the_bucket_plan_gives_each_bucket_its_slice_of_every_part(tmp_path):
    """The plan is written a block of parts at a time (a tiny block here) and read back per bucket: each
    bucket gets exactly its non-empty (rows, bytes) slice of each part, in part order."""
    rng = np.random.default_rng(5)
    n_buckets, n_parts = 7, 23
    bounds = []
    for _ in range(n_parts):
        rows = np.concatenate([[0], np.sort(rng.integers(0, 50, n_buckets - 1)), [50]])
        bounds.append(np.column_stack([rows, rows * 10 + 3]))
    paths = [str(tmp_path / f"p{j}.arrow") for j in range(n_parts)]
    plan = tmp_path / "plan.npy"
    with mock.patch("cellcorpus.formats.shuffle_plan._BLOCK_BYTES", 16 * (n_buckets + 1) * 5):
        cells = write_bucket_plan(plan, paths, lambda j: bounds[j], n_buckets)
    assert cells.sum() == 50 * n_parts
    for b in range(n_buckets):
        want = [
            (paths[j], *map(int, (bounds[j][b, 0], bounds[j][b + 1, 0], bounds[j][b, 1], bounds[j][b + 1, 1])))
            for j in range(n_parts)
            if bounds[j][b + 1, 0] > bounds[j][b, 0]
        ]
        assert bucket_slices(plan, b) == want
        assert cells[b] == sum(s[2] - s[1] for s in want)
    with pytest.raises(InputError, match=r"p3\.arrow: 6 shuffle buckets recorded, 7 planned"):
        write_bucket_plan(plan, paths, lambda j: bounds[j][:-1] if j == 3 else bounds[j], n_buckets)


def test_a_part_record_of_an_earlier_version_still_gives_its_bounds(tmp_path):
    """Records written before the bounds moved out of the ledger held them as lists (bytes maybe absent)."""
    name = write_part_bounds(tmp_path / "u.arrow", [0, 4, 9], [0, 80, 170])
    new = part_bounds(tmp_path / "u.arrow", {"bounds": name})
    assert new.tolist() == [[0, 0], [4, 80], [9, 170]]
    assert part_bounds("u.arrow", {"bucket_bounds": [0, 4, 9], "bucket_bytes": [0, 80, 170]}).tolist() == new.tolist()
    assert part_bounds("u.arrow", {"bucket_bounds": [0, 4, 9]}).tolist() == [[0, -1], [4, -1], [9, -1]]
    (tmp_path / "u.bounds.npy").write_bytes(b"not numpy")
    with pytest.raises(InputError, match=r"u\.bounds\.npy: a shuffle part's bucket bounds cannot be read"):
        part_bounds(tmp_path / "u.arrow", {"bounds": "u.bounds.npy"})
