"""The shipped Tahoe configs read both plate layouts: var with a `gene_id` column (the seed's plate14), and var
holding only symbols (Arc's tutorial plate, `tahoe100M/2025-02-25/tutorial/plate3_2k-obs.h5ad`, shows no var
column), whose symbols map to Ensembl ids through the release's gene table. Same vocabulary, same tokens."""

from __future__ import annotations

import json
from pathlib import Path

import anndata as ad
import pytest

from cellcorpus.config import load_config
from cellcorpus.demo import make_demo_atlas
from cellcorpus.errors import ConfigError
from cellcorpus.pipeline import packaged_config
from cellcorpus.stages.tokenize import run_tokenize
from cellcorpus.stages.vocab import run_vocab
from tests._utils import arrow_rows

SHIPPED = ("tahoe_x1_v2/tahoe_100m.yaml", "geneformer/tahoe_100m_geneformer.yaml")


def _symbols_only(plates: Path) -> None:
    """Rewrite every plate without its var columns: the var names (symbols) are all it holds."""
    for path in sorted(plates.glob("*.h5ad")):
        adata = ad.read_h5ad(path)
        adata.var = adata.var.drop(columns=list(adata.var.columns))
        adata.write_h5ad(path)


def _build(root: Path, name: str, symbols_only: bool) -> tuple[Path, object]:
    atlas = make_demo_atlas(root)
    if symbols_only:
        _symbols_only(atlas.tahoe_dir)
    cfg = load_config(packaged_config(name), [f"output_root={root}"])
    run_vocab(cfg)
    if cfg.stats is not None:
        from cellcorpus.stages.stats import run_stats

        run_stats(cfg)
    run_tokenize(cfg)
    return Path(cfg.huggingface.merged_dataset_root), cfg


@pytest.mark.parametrize("name", SHIPPED)
def test_plates_with_and_without_gene_id_give_the_same_corpus(tmp_path, name):
    with_ids, cfg = _build(tmp_path / "gene_id", name, symbols_only=False)
    symbols, _ = _build(tmp_path / "symbols", name, symbols_only=True)
    vocab = Path(cfg.vocab.vocab_file).relative_to(tmp_path / "gene_id")
    assert (tmp_path / "symbols" / vocab).read_bytes() == (tmp_path / "gene_id" / vocab).read_bytes()
    for split in ("train", "valid"):
        a, b = arrow_rows(with_ids / f"{split}.dataset"), arrow_rows(symbols / f"{split}.dataset")
        assert a == b and len(a) > 0
    manifest = json.loads((symbols / "manifest.json").read_text())
    assert {u["genes_via_map"] for u in manifest["units"]} == {400}  # every plate gene, through the table


def test_a_plate_with_neither_column_names_both(tmp_path):
    atlas = make_demo_atlas(tmp_path)
    cfg = load_config(packaged_config(SHIPPED[0]), [f"output_root={tmp_path}", "vocab.use_col=[gene_id,feature_id]"])
    _symbols_only(atlas.tahoe_dir)
    with pytest.raises(ConfigError, match=r"vocab.use_col: 'gene_id' or 'feature_id' is not a var column"):
        run_vocab(cfg)
