"""report stage: stats.json agrees with the manifests and the data; plots and page are written."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cellcorpus.config import load_config
from cellcorpus.encodings import column_specs
from cellcorpus.encodings.tahoe_x1 import TahoeX1
from cellcorpus.errors import ConfigError
from cellcorpus.stages.mds import run_mds
from cellcorpus.stages.report import run_report
from cellcorpus.stages.tokenize import run_tokenize
from tests._utils import arrow_rows, random_corpus


def test_report_numbers_match_data(tmp_path, write_config):
    random_corpus(tmp_path, seed=3)
    cfg = load_config(
        write_config(**{"huggingface.dataset_name": "tiny", "huggingface.filter_cells": {"min_genes": 2}})
    )
    run_tokenize(cfg)
    run_mds(cfg)
    s = run_report(cfg)
    folder = tmp_path / "merged" / "report"
    stats = json.loads((folder / "stats.json").read_text())
    manifest = json.loads((tmp_path / "merged" / "manifest.json").read_text())
    assert stats["totals"] == manifest["totals"] and stats["input_cells"] == 500
    for split in ("train", "valid"):
        rows = arrow_rows(tmp_path / "merged" / f"{split}.dataset")
        genes = np.array([len(r["genes"]) - 1 for r in rows])
        counts = np.array([sum(r["expressions"][1:]) for r in rows])
        st = stats["splits"][split]
        assert st["cells"] == len(rows) == s.counts[f"{split} cells"]
        assert st["genes_per_cell"]["q100"] == genes.max() and st["genes_per_cell"]["q00"] == genes.min()
        assert st["counts_per_cell"]["mean"] == pytest.approx(counts.mean())
        assert stats["mds"][split]["samples"] == len(rows)
    page = (folder / "report.html").read_text()
    assert "<h1>tiny</h1>" in page and page.count("<svg") == 3 + len(stats["metadata_top_values"])
    assert "http" not in page.replace("http://www.w3.org", "")
    # the funnel equals the stage summaries, MDS drops included
    mds_manifest = json.loads((tmp_path / "mds" / "manifest.json").read_text())
    funnel = {f["step"]: f["cells"] for f in stats["funnel"]}
    t = manifest["totals"]
    assert funnel["cells read"] == t["cells_read"] == 500
    assert funnel["dropped: min genes"] == t["filtered_min_genes"]
    assert funnel["Arrow train"] == t["written_train"] and funnel["Arrow valid"] == t["written_valid"]
    for split in ("train", "valid"):
        assert funnel[f"MDS {split}"] == mds_manifest["splits"][split]["samples"]
        assert funnel[f"dropped: MDS {split} min_length"] == mds_manifest["splits"][split]["dropped_min_length"]
    for heading in ("What went in", "From cells read", "as a model sees them", "Vocabulary coverage",
                    "Metadata composition", "Output"):  # fmt: skip
        assert heading in page
    assert sum(r["cells_read"] for r in stats["per_file"]) == 500
    assert 0 < stats["vocabulary"]["share_seen"] <= 1


def test_report_before_tokenize_is_clear(write_config):
    with pytest.raises(ConfigError, match="nothing to report"):
        run_report(load_config(write_config()))


def test_report_renders_in_a_headless_browser(tmp_path, write_config):
    """The page is self-contained and its figures draw: Chromium renders it to a non-blank screenshot."""
    import shutil
    import subprocess

    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        pytest.skip("no Chromium installed (.ci/run installs Debian's chromium)")
    random_corpus(tmp_path, seed=3, n_drugs=3)
    cfg = load_config(write_config(**{"huggingface.obs_metadata_columns": ["drug"]}))
    run_tokenize(cfg)
    run_mds(cfg)
    run_report(cfg)
    page = tmp_path / "merged" / "report" / "report.html"
    shot = tmp_path / "shot.png"
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}",
    ]
    Image = pytest.importorskip("PIL.Image")
    for width in (1000, 600):  # a desktop window and a narrow one: the figures shrink to the page
        done = subprocess.run([browser, *flags, f"--window-size={width},3000", f"--screenshot={shot}", page.as_uri()],
                              capture_output=True, timeout=120)  # fmt: skip
        assert shot.is_file(), done.stderr.decode()[-2000:]
        img = np.asarray(Image.open(shot).convert("L"))
        assert img.shape[1] == width and (img < 128).mean() > 0.002  # text and drawn figures, not a blank page
        shot.unlink()
    dom = subprocess.run([browser, *flags, "--dump-dom", page.as_uri()], capture_output=True, timeout=120)
    text = dom.stdout.decode()
    # the funnel, two histograms and one bar chart per metadata column kept (here: drug)
    assert text.count("<svg") == 4 and "polyline" in text and "drug: the 3 most frequent values" in text
    assert 'width="100%"' in text  # no figure wider than the page


def test_a_data_file_is_scanned_batch_by_batch_and_an_empty_cell_totals_zero(tmp_path):
    """Several record batches, cells without CLS, one of them empty: per-cell totals and gene counts are those
    of the rows (an empty cell's total is 0, not its neighbour's first count), tokens and values are counted."""
    import pyarrow as pa

    from cellcorpus.formats.arrow import cell_schema, write_stream
    from cellcorpus.stages.report import _FileUnit, _scan_file, _ScanCtx

    genes = [[3, 4], [], [5], [3, 6, 7]]
    exprs = [[1.0, 2.0], [], [4.0], [1.0, 1.0, 5.0]]
    table = pa.Table.from_pydict(
        {"genes": genes, "expressions": exprs, "id": [0, 1, 2, (1 << 32) | 4], "drug": ["a", "b", "a", "a"]},
        schema=cell_schema(column_specs(TahoeX1), ["drug"]),
    )
    path = tmp_path / "data-00000-of-00001.arrow"
    write_stream(path, table, cuts=np.array([0, 1, 2, 4]))  # three batches
    got = _scan_file(_FileUnit("u", str(path), "train", 4), _ScanCtx(0, ("drug",)))
    assert got is not None
    assert got.genes.values.tolist() == [0, 1, 2, 3] and got.genes.counts.tolist() == [1, 1, 1, 1]
    assert got.counts.values.tolist() == [0.0, 3.0, 4.0, 7.0]
    assert got.files.tolist() == [0, 1] and got.entries.tolist() == [3, 3]
    assert got.tokens.tolist() == [3, 4, 5, 6, 7] and got.values == {"drug": {"a": 3, "b": 1}}


def test_plots_use_whole_number_bins_round_ticks_and_readable_sizes():
    """Issue 24: whole-number data in fractional-width bins drew false spikes; ticks were not round; sizes were raw
    bytes; a 6-cell valid split set the scale."""
    from cellcorpus.core.sketch import ValueCounts
    from cellcorpus.stages.report import _histogram_svg, human_bytes, integer_edges, nice_ticks

    edges = integer_edges(3, 97)
    widths = np.diff(edges)
    assert np.all(widths == widths[0]) and float(widths[0]).is_integer()  # every bin holds as many integers
    assert edges[0] == 2.5 and edges[-1] >= 97.5 and len(edges) - 1 <= 40
    assert nice_ticks(0, 0.37) == [0.0, 0.1, 0.2, 0.3] and nice_ticks(0, 0.031, 5) == [0.0, 0.01, 0.02, 0.03]
    assert nice_ticks(2.5, 97.5) == [20.0, 40.0, 60.0, 80.0]
    assert [human_bytes(n) for n in (999, 185_400, 2_150_000_000)] == ["999 B", "185.4 kB", "2.1 GB"]
    train = ValueCounts.of(np.random.default_rng(0).integers(20, 60, 5000))
    valid = ValueCounts.of(np.array([30, 30, 31, 45, 45, 45]))
    svg = _histogram_svg({"train": train, "valid": valid}, "t", "genes per cell", marks=(1024,))
    assert "every cell is shorter than 1,024 tokens" in svg
    assert svg.count("%</text>") >= 3  # a y axis with percentages
    assert 'stroke-dasharray="5 3"' in svg  # the small split drawn light, on train's scale


def test_mitochondrial_share_per_cell_from_the_vocabularys_symbols(tmp_path, write_config):
    """Issue 24: the QC a scientist looks for first. Each cell's share of counts from MT- genes (by the symbols
    the vocab stage wrote), computed in the workers, equals the share computed from the rows themselves."""
    from tests._utils import GENES

    random_corpus(tmp_path, seed=4)
    symbols = {g: (f"MT-CO{i}" if i < 2 else f"GENE{i}") for i, g in enumerate(GENES)}  # 2 of 5 genes are MT
    (tmp_path / "vocab" / "names.json").write_text(json.dumps(symbols))
    vocab_section = {"reference_adata": "unused.h5ad", "output_root": str(tmp_path / "vocab"),
                     "id_to_gene_output_file": "names.json"}  # fmt: skip
    cfg = load_config(write_config(vocab=vocab_section))
    run_tokenize(cfg)
    run_report(cfg)
    stats = json.loads((tmp_path / "merged" / "report" / "stats.json").read_text())
    vocab = json.loads((tmp_path / "vocab" / "vocab.json").read_text())
    mt = {vocab[GENES[0]], vocab[GENES[1]]}
    assert stats["mito_share"]["genes"] == 2
    for split in ("train", "valid"):
        shares = []
        for r in arrow_rows(tmp_path / "merged" / f"{split}.dataset"):
            genes, values = np.array(r["genes"][1:]), np.array(r["expressions"][1:], dtype=np.float64)
            total = values.sum()
            shares.append(round(values[np.isin(genes, list(mt))].sum() / total, 4) if total > 0 else 0.0)
        got = stats["mito_share"]["splits"][split]
        assert got["q50"] == pytest.approx(np.quantile(shares, 0.5), abs=1e-4)  # linear, as numpy
        assert got["mean"] == pytest.approx(np.mean(shares), abs=1e-4)
    page = (tmp_path / "merged" / "report" / "report.html").read_text()
    assert "from its 2 mitochondrial (MT-) genes" in page


def test_several_corpora_on_one_page(tmp_path, write_config):
    """Issue 24: `cellcorpus report A B --out page` writes each corpus' own report and one page side by side."""
    from typer.testing import CliRunner

    from cellcorpus.cli import app

    paths = []
    for name, seed in (("first", 1), ("second", 2)):
        root = tmp_path / name
        random_corpus(root, seed=seed, n_cells=100 * seed)
        paths.append(write_config(root, **{"huggingface.dataset_name": name}))
        run_tokenize(load_config(paths[-1]))
    page = tmp_path / "both.html"
    got = CliRunner().invoke(app, ["report", *map(str, paths), "--out", str(page)])
    assert got.exit_code == 0, got.output
    html_text = page.read_text()
    assert "<th>first</th><th>second</th>" in html_text
    stats = [json.loads((tmp_path / n / "merged" / "report" / "stats.json").read_text()) for n in ("first", "second")]
    cells = [s["input_cells"] for s in stats]
    assert (
        cells == [200, 400]
        and f"<td>input cells</td><td class=num>{cells[0]}</td><td class=num>{cells[1]}</td>" in html_text
    )
    assert html_text.count("<figure>") == 2  # each corpus' funnel
