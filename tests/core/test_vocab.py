import numpy as np

from cellcorpus.core.vocab import VocabLookup, build_vocab, strip_version


def test_specials_first_then_sorted_ids_then_junk_to_multiple_of_64():
    ids = np.array(["ENSG00000000003", "ENSG00000000001", "ENSG00000000002"], dtype=object)
    built = build_vocab(ids, np.array(["C", "A", "B"], dtype=object), ["<pad>", "<cls>", "<eoc>"], True)
    tokens = sorted(built.vocab, key=built.vocab.get)
    assert tokens[:6] == ["<pad>", "<cls>", "<eoc>", "ENSG00000000001", "ENSG00000000002", "ENSG00000000003"]
    assert len(tokens) == 64
    assert tokens[6] == "<junk0>" and tokens[-1] == "<junk57>"
    assert built.n_junk == 58
    assert built.id_to_gene == {"ENSG00000000001": "A", "ENSG00000000002": "B", "ENSG00000000003": "C"}


def test_no_junk_when_disabled_or_already_multiple():
    ids = np.array([f"ENSG{i:011d}" for i in range(61)], dtype=object)
    built = build_vocab(ids, ids, ["<pad>", "<cls>", "<eoc>"], True)
    assert len(built.vocab) == 64 and built.n_junk == 0
    built = build_vocab(ids[:5], ids[:5], ["<pad>"], False)
    assert len(built.vocab) == 6


def test_duplicates_reported_and_missing_dropped_and_versions_stripped():
    ids = np.array(["ENSG00000000002.5", None, "ENSG00000000001", "ENSG00000000002", ""], dtype=object)
    syms = np.array(["B", "X", "A", "B2", "Y"], dtype=object)
    built = build_vocab(ids, syms, ["<pad>"], False)
    assert built.vocab == {"<pad>": 0, "ENSG00000000001": 1, "ENSG00000000002": 2}
    assert built.duplicated_ids == ["ENSG00000000002"]
    assert built.n_missing_ids == 2
    assert built.id_to_gene["ENSG00000000002"] == "B"  # first occurrence kept


def test_strip_version_only_touches_ensembl_ids():
    out = strip_version(["ENSG00000139618.12", "RP11-34P13.3", "ENSMUSG00000000001.4", "ENSG00000139618"])
    assert out.tolist() == ["ENSG00000139618", "RP11-34P13.3", "ENSMUSG00000000001", "ENSG00000139618"]


def test_lookup_maps_versioned_ids_and_marks_oov():
    lk = VocabLookup({"<cls>": 0, "ENSG00000000001": 1, "ENSG00000000002": 2})
    assert lk.map_genes(np.array(["ENSG00000000002.1", "ENSG00000000009", "ENSG00000000001"])).tolist() == [2, -1, 1]
