"""Content fingerprints: equal for the same (gene, count) pairs in any order, layout or numbering; different for
different counts (scaled cells) and genes."""

from __future__ import annotations

import numpy as np

from cellcorpus.core.fingerprint import cell_fingerprints, gene_hashes
from cellcorpus.core.vocab import VocabLookup

GENES = np.array(["ENSG01", "ENSG02", "ENSG03", "ENSG04"])


def _fp(cells: list[list[tuple[int, float]]], dtype=np.float32, hashes=None):
    offsets = np.cumsum([0] + [len(c) for c in cells])
    genes = np.array([g for c in cells for g, _ in c], dtype=np.int32)
    counts = np.array([v for c in cells for _, v in c], dtype=dtype)
    return cell_fingerprints(offsets, genes, counts, gene_hashes(GENES) if hashes is None else hashes)


def test_order_zeros_and_value_type_do_not_matter():
    a = [(0, 3), (2, 1), (3, 7)]
    fps = _fp([a, a[::-1], [(2, 1), (1, 0), (0, 3), (3, 7)]])
    assert fps[0] == fps[1] == fps[2]  # another gene order; an explicit zero
    as_ints = _fp([a], dtype=np.int64)
    assert as_ints[0] == fps[0]  # integer counts and float32 counts are the same counts


def test_different_counts_or_genes_differ():
    a = [(0, 3), (2, 1), (3, 7)]
    fps = _fp([a, [(g, 2 * v) for g, v in a], [(0, 3), (2, 1)], [(0, 3), (1, 1), (3, 7)], [(0, 1), (2, 3), (3, 7)]])
    assert len(set(fps.tolist())) == 5  # scaled, a gene less, another gene, counts swapped between genes


def test_empty_and_all_zero_cells_are_the_same_empty_cell():
    fps = _fp([[], [(1, 0), (2, 0)], [(1, 2)], []])
    assert fps[0] == fps[1] == fps[3] and fps[2] != fps[0]


def test_fingerprints_follow_the_gene_ids_not_the_vocabularys_numbering():
    """Two vocabularies numbering the same Ensembl ids differently give a cell the same fingerprint."""
    one = VocabLookup({"<pad>": 0, "ENSG01": 1, "ENSG02": 2})
    two = VocabLookup({"<pad>": 0, "<cls>": 1, "ENSG02": 2, "ENSG01": 3})
    offsets = np.array([0, 2])
    fp_one = cell_fingerprints(offsets, np.array([1, 2]), np.array([5.0, 1.0]), one.token_hashes())
    fp_two = cell_fingerprints(offsets, np.array([3, 2]), np.array([5.0, 1.0]), two.token_hashes())
    assert fp_one[0] == fp_two[0]


def test_random_cells_share_a_fingerprint_exactly_when_they_hold_the_same_pairs():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 30, 20_000)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    genes = rng.integers(0, 4, offsets[-1]).astype(np.int32)
    counts = rng.integers(1, 1000, offsets[-1]).astype(np.float32)
    fps = cell_fingerprints(offsets, genes, counts, gene_hashes(GENES))
    cuts = zip(offsets[:-1].tolist(), offsets[1:].tolist(), strict=True)
    contents = [tuple(sorted(zip(genes[a:b].tolist(), counts[a:b].tolist(), strict=True))) for a, b in cuts]
    by_content: dict[tuple, set] = {}
    for c, fp in zip(contents, fps.tolist(), strict=True):
        by_content.setdefault(c, set()).add(fp)
    assert all(len(v) == 1 for v in by_content.values())  # the same pairs: one fingerprint
    assert len(set(fps.tolist())) == len(by_content) < len(fps)  # different pairs: different ones (some repeat)
