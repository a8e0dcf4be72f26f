"""`cellcorpus report`: one self-contained `report.html` per dataset, and `stats.json` with the same numbers.

The page reads top to bottom: what went in (files, cells, versions, config digest), the funnel from cells
read through every filter to Arrow train/valid and MDS, the distributions that matter for training (genes
per cell against context lengths, counts per cell on a log axis in real counts), vocabulary coverage, the
metadata composition and the output (shards, sizes, compression). Figures are inline SVG drawn here (a few
lines each), so the page needs no network and the install no plotting library (matplotlib and its
dependencies were ~80 MB of a default install for three PNGs). The Arrow splits are read once, a data file
per worker task; each file's distributions come back as small mergeable counts (`core/sketch.py`), so the
report's memory does not grow with the corpus.
"""

from __future__ import annotations

import html
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from numpy.typing import NDArray

from cellcorpus._version import __version__
from cellcorpus.config import CELL_HASH, Config, HuggingfaceConfig
from cellcorpus.core.ids import decode_ids
from cellcorpus.core.sketch import ValueCounts
from cellcorpus.encodings import CellRules, encoding_for
from cellcorpus.errors import ConfigError
from cellcorpus.exec.runner import ExecutorSpec, Reporter, run_units
from cellcorpus.io.atomic import write_json_atomic
from cellcorpus.io.paths import Publisher, local_copy
from cellcorpus.io.vocab import load_vocab
from cellcorpus.layout import DEDUP_RECORD, REPORT_DIR, SPLITS, VERIFY_RECORD
from cellcorpus.manifest import MdsManifest, TokenizeManifest, read_manifest
from cellcorpus.plan import Plan, plan_for
from cellcorpus.stages.base import StageSummary, locked

__all__ = ["run_report", "CONTEXT_LENGTHS"]

_QUANTILES = (0.0, 0.01, 0.1, 0.5, 0.9, 0.99, 1.0)
CONTEXT_LENGTHS = (1024, 2048, 4096)  # Tahoe-x1 / scGPT-style training context lengths, marked on the plot
_TOP = 10
_COLORS = {"train": "#3b6ea8", "valid": "#d9822b"}


# ---- one pass over the data ---------------------------------------------------------------------------
_VALUES_CAP = 100_000  # distinct values counted exactly per metadata column (a barcode-like column has one per cell)


@dataclass(frozen=True, order=True)
class _FileUnit:
    unit_id: str
    path: str
    split: str
    n_cells: int


@dataclass(frozen=True)
class _ScanCtx:
    skip: int  # tokens per cell that are not genes (CLS, EOS)
    columns: tuple[str, ...]  # metadata columns whose values are counted
    tokens: str = "genes"  # the encoding's token list column
    values: str | None = "expressions"  # its per-token counts (None: the encoding writes none)
    mt_tokens: tuple[int, ...] = ()  # token ids of mitochondrial genes (symbol MT-...), for each cell's MT share


@dataclass
class _FileStats:
    """One data file's distributions: small and mergeable (what a worker sends back, whatever the file's size)."""

    split: str
    genes: ValueCounts
    counts: ValueCounts
    files: NDArray[np.int64]  # input files present, and the entries written from each
    entries: NDArray[np.int64]
    tokens: NDArray[np.int64]  # distinct token ids
    values: dict[str, dict[str, int]]
    mt: ValueCounts | None = None  # per cell: share of its counts from mitochondrial genes


def _scan_file(unit: _FileUnit, ctx: _ScanCtx) -> _FileStats | None:
    """Genes and total counts per cell, entries per input file, tokens and metadata values of one data file,
    read as a stream one record batch at a time (a mapped file counts whole in the worker's RSS)."""
    lengths, totals, files, tokens, mt_shares = [], [], [], [], []
    mt_ids = np.array(ctx.mt_tokens, dtype=np.int64)
    values: dict[str, Counter[str]] = {c: Counter() for c in ctx.columns}
    with local_copy(unit.path) as p, pa.OSFile(str(p)) as f:
        for batch in pa.ipc.open_stream(f):
            if not batch.num_rows:
                continue
            n_genes = pc.list_value_length(batch.column(ctx.tokens)).to_numpy(zero_copy_only=False)
            lengths.append(n_genes - ctx.skip)
            files.append(decode_ids(batch.column("id").to_numpy())[0])
            tokens.append(pc.unique(pc.list_flatten(batch.column(ctx.tokens))).to_numpy().astype(np.int64))
            for col in ctx.columns:
                if col in batch.schema.names:
                    values[col].update(
                        {v["values"]: v["counts"] for v in pc.value_counts(batch.column(col)).to_pylist()}
                    )
            if ctx.values is None:  # no counts written: no counts or mitochondrial share to show
                continue
            exprs = batch.column(ctx.values)
            offsets = exprs.offsets.to_numpy().astype(np.int64)
            flat = exprs.values.to_numpy()[offsets[0] : offsets[-1]]  # float32, as stored: no float64 copy
            starts = offsets[:-1] - offsets[0]
            some = np.diff(offsets) > 0
            # summed in float64 element by element, as after an astype(float64) copy (8 bytes per token)
            sums = np.zeros(len(starts))
            if len(flat):
                sums[some] = np.add.reduceat(flat, starts[some], dtype=np.float64)
            pad = (
                np.where(some, flat[np.minimum(starts, max(len(flat) - 1, 0))], 0.0) if ctx.skip and len(flat) else 0.0
            )
            total = sums - pad
            totals.append(total)
            if len(mt_ids) and len(flat):  # counts of the cell's MT genes over all its counts (CLS excluded)
                genes = batch.column(ctx.tokens).values.to_numpy()[offsets[0] : offsets[-1]]
                mt = np.zeros(len(starts))
                mt[some] = np.add.reduceat(np.where(np.isin(genes, mt_ids), flat, 0), starts[some], dtype=np.float64)
                mt_shares.append(np.divide(mt, total, out=np.zeros_like(mt), where=total > 0))
    if not lengths:
        return None
    n = np.concatenate(lengths)
    uniq, inverse = np.unique(np.concatenate(files), return_inverse=True)
    entries = np.bincount(inverse, weights=n).astype(np.int64)
    found = {c: dict(v) for c, v in values.items() if v}
    mt_counts = ValueCounts.of(np.round(np.concatenate(mt_shares), 4)) if mt_shares else None  # to 0.01%
    return _FileStats(
        unit.split, ValueCounts.of(n), ValueCounts.of(np.concatenate(totals) if totals else np.zeros(0)), uniq, entries,
        np.unique(np.concatenate(tokens)), found, mt_counts,
    )  # fmt: skip


class _Totals:
    """The files' statistics merged as they arrive: memory bounded by distinct values, never by cells."""

    def __init__(self, splits: list[str], inputs: list[int], columns: tuple[str, ...]) -> None:
        self.genes = {s: ValueCounts() for s in splits}
        self.counts = {s: ValueCounts() for s in splits}
        self.mt = {s: ValueCounts() for s in splits}
        self.inputs = np.array(sorted(inputs), dtype=np.int64)
        self.entries = np.zeros(len(self.inputs), np.int64)
        self.tokens = np.zeros(0, np.int64)
        self.values: dict[str, Counter[str]] = {c: Counter() for c in columns}
        self.approximate: set[str] = set()  # metadata columns with more distinct values than were kept

    def add(self, got: _FileStats | None) -> None:
        """Fold one file's statistics in."""
        if got is None:
            return
        self.genes[got.split] = self.genes[got.split].merge(got.genes)
        self.counts[got.split] = self.counts[got.split].merge(got.counts)
        if got.mt is not None:
            self.mt[got.split] = self.mt[got.split].merge(got.mt)
        pos = np.searchsorted(self.inputs, got.files)
        known = (pos < len(self.inputs)) & (self.inputs[np.minimum(pos, len(self.inputs) - 1)] == got.files)
        np.add.at(self.entries, pos[known], got.entries[known])
        self.tokens = np.union1d(self.tokens, got.tokens)
        for col, counts in got.values.items():
            counter = self.values[col]
            counter.update(counts)
            if len(counter) > 2 * _VALUES_CAP:  # keep the most frequent: the report shows the top few
                self.values[col] = Counter(dict(counter.most_common(_VALUES_CAP)))
                self.approximate.add(col)

    def entries_by_file(self) -> dict[int, int]:
        """Entries written per input file index."""
        return dict(zip(self.inputs.tolist(), self.entries.tolist(), strict=True))


def _scan(
    out: Publisher,
    manifest: TokenizeManifest,
    rules: CellRules,
    spec: ExecutorSpec,
    reporter: Reporter | None,
    mt_tokens: tuple[int, ...] = (),
) -> _Totals:
    """Every data file of every split, read once, in the workers; their statistics merged here."""
    columns = tuple(c for c in manifest.metadata_columns if c not in ("index", CELL_HASH))  # a value per cell
    totals = _Totals(list(manifest.splits), [f.file_index for f in manifest.inputs], columns)
    units = [
        _FileUnit(f"{split}-{rec.path}", out.url(f"{split}.dataset/{rec.path}"), split, rec.n_cells)
        for split, records in manifest.splits.items()
        for rec in records
    ]
    run_units(
        _scan_file, units, _ScanCtx(rules.special, columns, rules.tokens, rules.values, mt_tokens), None, spec,
        description="report",
        cells_of=lambda u: u.n_cells, reporter=reporter, keep=lambda _unit, got: totals.add(got),
    )  # fmt: skip
    return totals


def _quantiles(x: ValueCounts) -> dict[str, float]:
    if not x.n:
        return {}
    out = {f"q{int(q * 100):02d}": x.quantile(q) for q in _QUANTILES} | {"mean": x.mean()}
    return out | ({"relative_precision": x.alpha} if x.approximate else {})


# ---- inline SVG figures ---------------------------------------------------------------------------------
def _svg(width: int, height: int, body: str, title: str) -> str:
    return (
        f'<figure><figcaption>{html.escape(title)}</figcaption><svg xmlns="http://www.w3.org/2000/svg" '
        f'viewBox="0 0 {width} {height}" width="100%" style="max-width:{width}px;height:auto" role="img" '
        f'aria-label="{html.escape(title)}">{body}</svg></figure>'
    )


def _text(x: float, y: float, s: str, anchor: str = "start", size: int = 11, extra: str = "") -> str:
    return f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}" {extra}>{html.escape(s)}</text>'


def _funnel_svg(steps: list[tuple[str, int, str]]) -> str:
    """Horizontal bars: (label, cells, kind) with kind in in / drop / out."""
    width, left, bar_w, row = 760, 250, 380, 24
    top = max((n for _, n, _ in steps), default=1) or 1
    fill = {"in": "#555", "drop": "#c0504d", "out": "#3b6ea8"}
    parts = []
    for i, (label, n, kind) in enumerate(steps):
        y = 10 + i * row
        w = bar_w * n / top
        parts.append(_text(left - 8, y + 15, label, "end"))
        parts.append(f'<rect x="{left}" y="{y + 3}" width="{max(w, 1):.1f}" height="{row - 8}" fill="{fill[kind]}"/>')
        parts.append(_text(left + max(w, 1) + 6, y + 15, f"{n:,}"))
    return _svg(width, 20 + len(steps) * row, "".join(parts), "Cells from input to output (every drop named)")


def _mito_tokens(cfg: Config, vocab: dict[str, int]) -> tuple[tuple[int, ...], dict[str, Any]]:
    """Token ids of the mitochondrial genes (symbol `MT-...` in the vocabulary's id -> symbol file), and what the
    report says about them; none without that file (`vocab.id_to_gene_output_file`)."""
    vc = cfg.vocab
    symbols = None
    if vc is not None and vc.id_to_gene_output_file:
        symbols = Publisher(vc.output_root, staging=".").read_json(vc.id_to_gene_output_file)
    if not symbols:
        return (), {"genes": 0, "note": "no gene symbols (vocab.id_to_gene_output_file): not computed"}
    ids = sorted(vocab[g] for g, s in symbols.items() if str(s).upper().startswith("MT-") and g in vocab)
    if not ids:
        return (), {"genes": 0, "note": "no mitochondrial (MT-) gene among the vocabulary's symbols"}
    return tuple(ids), {"genes": len(ids)}


def _mito_html(mito: dict[str, Any], dist: dict[str, dict[str, ValueCounts]]) -> str:
    """The QC plot a scientist looks for first: each cell's share of counts from mitochondrial genes."""
    if not mito.get("genes"):
        return f"<p class=muted>Mitochondrial share per cell: {html.escape(mito.get('note', ''))}.</p>"
    return _histogram_svg(
        {s: d["mito_share"] for s, d in dist.items()},
        f"Share of each cell's counts from its {mito['genes']} mitochondrial (MT-) genes",
        "mitochondrial share of the cell's counts (0.1 = 10%)",
    )


def _join_coverage(hf: HuggingfaceConfig, values: dict[str, Counter[str]], cells: int) -> dict[str, dict[str, Any]]:
    """Per joined column: the table it came from and the share of written cells with a value (a key the table
    does not hold leaves the column empty: the demo's cell lines miss a quarter of the cells)."""
    renamed = hf.rename_columns
    out = {}
    for join in hf.additional_metadata_info:
        for col in join.columns:
            name = renamed.get(col, col)
            if name in values and cells:
                empty = values[name].get("", 0)
                out[name] = {"table": Path(join.path).name, "cells_with_value": cells - empty,
                             "share": round((cells - empty) / cells, 6)}  # fmt: skip
    return out


def _bars_svg(rows: list[tuple[str, int]], total: int, title: str) -> str:
    """Horizontal bars of a column's most frequent values, each with its count and share of the cells."""
    width, left, bar_w, row = 760, 230, 380, 20
    top = max((n for _, n in rows), default=1) or 1
    parts = []
    for i, (label, n) in enumerate(rows):
        y = 6 + i * row
        w = bar_w * n / top
        shown = label if len(label) <= 30 else label[:29] + "…"  # fits left of the bars
        parts.append(_text(left - 8, y + 12, shown or "(empty)", "end"))
        fill = "#c0504d" if not label else "#3b6ea8"  # an empty value (a join that found nothing) stands out
        parts.append(f'<rect x="{left}" y="{y}" width="{max(w, 1):.1f}" height="{row - 6}" fill="{fill}"/>')
        parts.append(_text(left + max(w, 1) + 6, y + 12, f"{n:,} ({n / max(total, 1):.1%})"))
    return _svg(width, 12 + len(rows) * row, "".join(parts), title)


def nice_ticks(lo: float, hi: float, most: int = 6) -> list[float]:
    """Round tick values covering [lo, hi]: steps of 1, 2 or 5 x 10^k, at most `most` of them."""
    span = max(hi - lo, 1e-12)
    step = 10 ** np.floor(np.log10(span / max(most - 1, 1)))
    for m in (1, 2, 5, 10):
        if span / (m * step) <= most - 1:
            step *= m
            break
    first = np.ceil(lo / step) * step
    return [round(float(t), 12) for t in np.arange(first, hi + step * 1e-9, step)]  # no 0.30000000000000004


def integer_edges(lo: float, hi: float, most: int = 40) -> NDArray[np.float64]:
    """Bin edges for whole-number data: bins of a whole width centred on integers (a fractional width puts
    two integers in some bins and one in others, which draws false spikes and dips)."""
    width = max(1, int(np.ceil((hi - lo + 1) / most)))
    return np.arange(np.floor(lo) - 0.5, np.ceil(hi) + 0.5 + width, width, dtype=np.float64)


def _histogram_svg(
    series: dict[str, ValueCounts], title: str, xlabel: str, log: bool = False, marks: tuple[int, ...] = ()
) -> str:
    """Share of each split's cells per bin (so a small split stays visible beside train). The y scale is set by
    the largest split (a 6-cell valid split cannot flatten train), ticks are round numbers, whole-number data
    gets whole-number bins, and the legend sits above the plot."""
    width, height, left, bottom, top_pad = 760, 320, 64, 50, 40
    plot_w, plot_h = width - left - 20, height - bottom - top_pad
    data = {k: v for k, v in series.items() if v.n}
    if not data:
        return _svg(width, 60, _text(10, 30, "no cells"), title)
    lo = min(float(v.values[0]) for v in data.values())
    hi = max(float(v.values[-1]) for v in data.values())
    integers = not log and all(v.alpha == 0 and bool(np.all(np.mod(v.values, 1) == 0)) for v in data.values())
    if log:
        lo, hi = np.log10(max(lo, 1.0)), np.log10(max(hi, 10.0))
    edges = integer_edges(lo, hi) if integers else np.linspace(lo, max(hi, lo + 1e-9), 41)
    x0, x1 = float(edges[0]), float(edges[-1])
    hists = {}
    for k, v in data.items():
        counts = v.histogram(edges, (lambda x: np.log10(np.maximum(x, 1.0))) if log else None)
        hists[k] = counts / max(v.n, 1)
    biggest = max(data, key=lambda k: data[k].n)
    ymax = float(hists[biggest].max()) or 1.0
    y_ticks = [t for t in nice_ticks(0.0, ymax, 5) if t <= ymax * 1.0001]
    ymax = max(ymax, y_ticks[-1]) if y_ticks else ymax

    def sx(value: float) -> float:
        return left + plot_w * (value - x0) / max(x1 - x0, 1e-12)

    def sy(share: float) -> float:
        return top_pad + plot_h - plot_h * min(share / ymax, 1.0)  # a smaller split's peak is clipped, not rescaled

    parts = [f'<line x1="{left}" y1="{top_pad + plot_h}" x2="{left + plot_w}" y2="{top_pad + plot_h}" stroke="#333"/>',
             f'<line x1="{left}" y1="{top_pad}" x2="{left}" y2="{top_pad + plot_h}" stroke="#333"/>']  # fmt: skip
    for t in y_ticks:
        parts.append(f'<line x1="{left - 4}" y1="{sy(t):.1f}" x2="{left}" y2="{sy(t):.1f}" stroke="#333"/>')
        parts.append(_text(left - 6, sy(t) + 4, f"{t:.0%}" if ymax >= 0.05 else f"{t:.1%}", "end"))
    for k, h in hists.items():
        pts = " ".join(
            f"{sx(edges[i]):.1f},{sy(h[i]):.1f} {sx(edges[i + 1]):.1f},{sy(h[i]):.1f}" for i in range(len(h))
        )
        style = 'stroke-width="2"' if k == biggest else 'stroke-width="1.2" stroke-dasharray="5 3" opacity="0.8"'
        parts.append(f'<polyline fill="none" stroke="{_COLORS.get(k, "#666")}" {style} points="{pts}"/>')
    if log:  # powers of ten when the data spans a few of them, else round counts placed on the log axis
        x_ticks = [float(t) for t in range(int(np.ceil(x0)), int(np.floor(x1)) + 1)]
        if len(x_ticks) < 3:
            x_ticks = [float(np.log10(t)) for t in nice_ticks(10**x0, 10**x1) if t > 0]
        labels = [f"{10**t:,.0f}" for t in x_ticks]
    else:
        x_ticks = nice_ticks(x0, x1)
        labels = [f"{t:,.0f}" if float(t).is_integer() else f"{t:,.2g}" for t in x_ticks]
    for t, label in zip(x_ticks, labels, strict=True):
        parts.append(f'<line x1="{sx(t):.1f}" y1="{top_pad + plot_h}" x2="{sx(t):.1f}" y2="{top_pad + plot_h + 4}" '
                     'stroke="#333"/>')  # fmt: skip
        parts.append(_text(sx(t), top_pad + plot_h + 16, label, "middle"))
    shown = [m for m in marks if x0 <= m <= x1]
    for m in shown:
        parts.append(f'<line x1="{sx(m):.1f}" y1="{top_pad}" x2="{sx(m):.1f}" y2="{top_pad + plot_h}" '
                     'stroke="#999" stroke-dasharray="4 3"/>')  # fmt: skip
        parts.append(_text(sx(m) + 3, top_pad + 12, f"context {m:,}", size=10))
    if marks and not shown and x1 < min(marks):  # say it rather than draw lines far off the data
        parts.append(_text(left + plot_w - 4, top_pad + 12, f"every cell is shorter than {min(marks):,} tokens",
                           "end", size=10))  # fmt: skip
    parts.append(_text(left + plot_w / 2, height - 12, xlabel, "middle"))
    parts.append(_text(14, top_pad + plot_h / 2, "share of the split's cells", "middle",
                       extra=f'transform="rotate(-90 14 {top_pad + plot_h / 2})"'))  # fmt: skip
    for i, k in enumerate(hists):  # above the plot: it never covers a curve
        parts.append(f'<rect x="{left + i * 190}" y="8" width="12" height="12" fill="{_COLORS.get(k, "#666")}"/>')
        parts.append(_text(left + 16 + i * 190, 18, f"{k} ({data[k].n:,} cells)"))
    return _svg(width, height, "".join(parts), title)


def human_bytes(n: int) -> str:
    """1,234,567 -> '1.2 MB' (powers of 1000, as disks are sold)."""
    size = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000:
            return f"{size:,.0f} {unit}" if unit == "B" else f"{size:,.1f} {unit}"
        size /= 1000
    return f"{size:,.1f} TB"


# ---- the page ------------------------------------------------------------------------------------------
def _table(head: list[str], rows: list[list[Any]]) -> str:
    def cell(v: Any) -> str:
        return f"<td class=num>{v:,}</td>" if isinstance(v, int) else f"<td>{html.escape(str(v))}</td>"

    h = "".join(f"<th>{html.escape(c)}</th>" for c in head)
    body = "".join("<tr>" + "".join(cell(v) for v in r) + "</tr>" for r in rows)
    return f"<table><tr>{h}</tr>{body}</table>"


_CSS = """body{font-family:system-ui,sans-serif;max-width:900px;margin:2em auto;color:#222;line-height:1.4}
h1{margin-bottom:.2em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ddd;padding:3px 8px;font-size:13px}
th{background:#f3f3f3;text-align:left}td.num{text-align:right;font-variant-numeric:tabular-nums}
figure{margin:1em 0}figcaption{font-weight:600;margin-bottom:.3em}.muted{color:#666;font-size:13px}"""


def _label(key: str) -> str:
    return key.removeprefix("filtered_").replace("_", " ")


def _funnel(manifest: TokenizeManifest, mds: MdsManifest | None) -> list[tuple[str, int, str]]:
    t = manifest.totals
    steps = [("cells read", t.get("cells_read", 0), "in")]
    # in the order tokenize applies them (the manifest's totals are stored sorted by name)
    order = ["filtered_obs_filter", "filtered_min_genes", "filtered_min_counts", "filtered_min_vocab_genes",
             "filtered_listed_ids"]  # fmt: skip
    drops = [k for k in order if k in t] + sorted(k for k in t if k.startswith("filtered_") and k not in order)
    steps += [(f"dropped: {_label(k)}", t[k], "drop") for k in drops]
    steps += [("Arrow train", t.get("written_train", 0), "out"), ("Arrow valid", t.get("written_valid", 0), "out")]
    if mds is not None:
        for split, rec in mds.splits.items():
            steps.append((f"dropped: MDS {split} min_length", rec.dropped_min_length, "drop"))
            steps.append((f"MDS {split}", rec.samples, "out"))
    return steps


@locked("report")
def run_report(cfg: Config | Plan, spec: ExecutorSpec | None = None, reporter: Reporter | None = None) -> StageSummary:
    """Write `<merged_dataset_root>/report/{stats.json, report.html}` (local scratch for URL roots)."""
    plan = plan_for(cfg, "report", spec)  # (`locked` resolved it: this is that plan)
    cfg, layout, spec = plan.cfg, plan.layout, plan.executor
    hf = cfg.need("huggingface")
    out = layout.merged_root()
    manifest = read_manifest(out, "manifest.json", TokenizeManifest)
    if manifest is None:
        raise ConfigError(
            f"nothing to report: no manifest in {hf.merged_dataset_root}", hint="run `cellcorpus tokenize`"
        )
    mds_manifest = read_manifest(layout.mds, "manifest.json", MdsManifest) if layout.mds else None
    vocab = load_vocab(hf.vocab_file)
    rules = encoding_for(hf, vocab).rules()
    mt_tokens, mito = (
        _mito_tokens(cfg, vocab)
        if rules.values is not None
        else ((), {"genes": 0, "note": "the encoding writes no counts: not computed"})
    )
    scan = _scan(out, manifest, rules, spec, reporter, mt_tokens)
    dist = {s: {"genes_per_cell": scan.genes[s], "counts_per_cell": scan.counts[s], "mito_share": scan.mt[s]}
            for s in manifest.splits}  # fmt: skip
    gene_tokens = {i for t, i in vocab.items() if not t.startswith("<")}
    seen = len(set(scan.tokens.tolist()) & gene_tokens)
    per_file = _per_file(manifest, scan.entries_by_file())
    stats: dict[str, Any] = {
        "dataset_name": manifest.dataset_name,
        "tool_version": manifest.tool_version,
        "report_tool_version": __version__,
        "config_hash": manifest.config_hash,
        "settings_hash": manifest.settings_hash,
        "totals": manifest.totals,
        "inputs": len(manifest.inputs),
        "input_cells": sum(f.n_obs for f in manifest.inputs),
        "metadata_columns": manifest.metadata_columns,
        "funnel": [{"step": s, "cells": n} for s, n, _ in _funnel(manifest, mds_manifest)],
        "splits": {
            s: {
                "cells": d["genes_per_cell"].n,
                "genes_per_cell": _quantiles(d["genes_per_cell"]),
                "counts_per_cell": _quantiles(d["counts_per_cell"]),
                "over_context": {str(c): d["genes_per_cell"].count_above(c - 1) for c in CONTEXT_LENGTHS},
            }
            for s, d in dist.items()
        },
        "vocabulary": {
            "gene_tokens": len(gene_tokens),
            "seen": seen,
            "share_seen": seen / max(len(gene_tokens), 1),
        },
        "per_file": per_file,
        "metadata_top_values": {c: counter.most_common(_TOP) for c, counter in scan.values.items()},
        "mds": None
        if not mds_manifest
        else {
            s: {
                "samples": v.samples,
                "shards": len(v.shards),
                "dropped_min_length": v.dropped_min_length,
                "bytes": sum((sh["zip_data"] or sh["raw_data"])["bytes"] for sh in v.shards),
                "raw_bytes": sum(sh["raw_data"]["bytes"] for sh in v.shards),
            }
            for s, v in mds_manifest.splits.items()
        },  # fmt: skip
        "gene_ids_per_file": _gene_ids_per_file(manifest),
        "verify": _last_verify(out, manifest.config_hash),
    }
    if scan.approximate:  # top values counted among the most frequent kept, not over all distinct values
        stats["metadata_top_values_approximate"] = sorted(scan.approximate)
    if mt_tokens:
        mito["splits"] = {s: _quantiles(scan.mt[s]) for s in manifest.splits}
    stats["mito_share"] = mito
    stats["join_coverage"] = _join_coverage(hf, scan.values, sum(v["cells"] for v in stats["splits"].values()))
    if manifest.non_integer_values:  # normalised data where raw counts are expected: shown, not only noted
        stats["non_integer_values"] = manifest.non_integer_values
    if manifest.held_out_groups is not None:  # a group split: which groups valid holds, cells written of each
        stats["held_out_groups"] = {"by": hf.split_parameters.by, "groups": manifest.held_out_groups}
    if (found := _last_dedup(out, manifest.config_hash)) is not None:  # `cellcorpus dedup` of this very build
        stats["duplicates"] = found
    folder = out.local_dir / REPORT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    write_json_atomic(folder / "stats.json", stats)
    (folder / "report.html").write_text(_page(stats, manifest, dist))
    for p in sorted(folder.iterdir()):
        out.publish(p)
    return StageSummary(
        "report",
        counts={f"{s} cells": v["cells"] for s, v in stats["splits"].items()},
        outputs={"report": out.url(f"{REPORT_DIR}/report.html")},
    )


def read_stats(cfg: Config | Plan) -> dict[str, Any]:
    """The `stats.json` the report stage wrote for this config (ConfigError when there is none yet)."""
    plan = plan_for(cfg, "report")
    stats = plan.layout.merged_root().read_json(f"{REPORT_DIR}/stats.json")
    if stats is None:
        raise ConfigError("no report yet for this config", hint="run `cellcorpus report CONFIG`")
    return dict(stats)


def _median(quantiles: dict[str, Any] | None) -> str:
    value = (quantiles or {}).get("q50")
    return "–" if value is None else f"{value:,.3g}" if value < 1 else f"{value:,.0f}"


def comparison_page(corpora: list[dict[str, Any]]) -> str:
    """Several corpora on one page (the v2 sources side by side): one column per corpus, then each funnel."""
    names = [str(s.get("dataset_name") or f"corpus {i + 1}") for i, s in enumerate(corpora)]

    def row(label: str, get: Any) -> list[Any]:
        return [label, *(get(s) for s in corpora)]

    def train(s: dict[str, Any]) -> dict[str, Any]:
        return dict(s["splits"].get("train", {}))

    def worst_join(s: dict[str, Any]) -> str:
        cover = s.get("join_coverage") or {}
        if not cover:
            return "–"
        col, j = min(cover.items(), key=lambda kv: kv[1]["share"])
        return f"{j['share']:.1%} ({col})"

    rows = [
        row("input files", lambda s: s["inputs"]),
        row("input cells", lambda s: s["input_cells"]),
        *[row(f"{sp} cells", lambda s, sp=sp: s["splits"].get(sp, {}).get("cells", 0)) for sp in SPLITS],
        row("median genes per cell (train)", lambda s: _median(train(s).get("genes_per_cell"))),
        row("median counts per cell (train)", lambda s: _median(train(s).get("counts_per_cell"))),
        row(
            "mitochondrial share, median (train)",
            lambda s: _median(((s.get("mito_share") or {}).get("splits") or {}).get("train")),
        ),  # fmt: skip
        row("vocabulary tokens seen", lambda s: f"{s['vocabulary']['share_seen']:.1%}"),
        row("lowest join coverage", worst_join),
        row("MDS size", lambda s: human_bytes(sum(v["bytes"] for v in (s.get("mds") or {}).values()))),
        row("not raw counts (values)", lambda s: sum((s.get("non_integer_values") or {}).values())),
        row("held-out groups", lambda s: len(((s.get("held_out_groups") or {}).get("groups")) or {}) or "–"),
    ]
    sections = [
        "<h1>Corpora side by side</h1>",
        f"<p class=muted>{len(corpora)} corpora, each also with its own report next to its datasets.</p>",
        _table(["", *names], rows),
    ]
    for name, s in zip(names, corpora, strict=True):
        sections += [f"<h2>{html.escape(name)}</h2>",
                     _funnel_svg([(f["step"], f["cells"], _kind(f["step"])) for f in s["funnel"]])]  # fmt: skip
    return (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>cellcorpus: corpora side by side</title>'
        + f"<style>{_CSS}</style></head><body>"
        + "".join(sections)
        + "</body></html>\n"
    )


def _last_verify(out: Publisher, config_hash: str) -> dict[str, Any] | None:
    """The last `cellcorpus verify` of this very run (None when it has not been verified since it was built)."""
    try:
        record = out.read_json(f"{REPORT_DIR}/{VERIFY_RECORD}")
    except Exception:  # a damaged record only loses the line on the page
        return None
    return record if record and record.get("config_hash") == config_hash else None


def _last_dedup(out: Publisher, config_hash: str) -> dict[str, Any] | None:
    """What `cellcorpus dedup` found in this very build (None when it has not run since the corpus was built):
    the counts, the ten largest pairs of inputs, and the cells each other corpus also holds."""
    try:
        record = out.read_json(f"{REPORT_DIR}/{DEDUP_RECORD}")
    except Exception:  # a damaged record only loses the section on the page
        return None
    if not record or record.get("config_hash") != config_hash:
        return None
    return {
        "cells": record["cells"],
        "duplicate_cells": record["duplicate_cells"],
        "groups": record["groups"],
        "pairs": record["pairs"][:10],
        "against": {name: found["cells_also_there"] for name, found in record.get("against", {}).items()},
    }


def _duplicates_html(found: dict[str, Any] | None) -> str:
    """The duplicates section (nothing when dedup has not run on this build)."""
    if found is None:
        return ""
    also = "".join(f"; {n:,} are also in <code>{html.escape(name)}</code>" for name, n in found["against"].items())
    text = (
        f"<h2>Duplicate cells</h2><p>{found['duplicate_cells']:,} of {found['cells']:,} cells repeat another cell of "
        f"this corpus ({found['groups']:,} groups of equal (gene, count) pairs){also}.</p>"
    )
    rows = [[p["input"], p["other_input"], p["cells"], f"row {p['example'][0][1]} = row {p['example'][1][1]}"]
            for p in found["pairs"]]  # fmt: skip
    return text + (_table(["input", "copy in", "cells", "example"], rows) if rows else "")


def _per_file(manifest: TokenizeManifest, entries: dict[int, int]) -> list[dict[str, Any]]:
    """Cells and vocabulary coverage per input file (OOV rate = stored entries dropped as out-of-vocabulary)."""
    by_file: dict[int, dict[str, int]] = {}
    for unit in manifest.units:
        row = by_file.setdefault(unit["file_index"], Counter())
        for key in ("cells_read", "written_train", "written_valid", "oov_entries_dropped"):
            row[key] += int(unit.get(key, 0))
        row["oov_genes"] = int(unit.get("oov_genes", 0))
    rows = []
    for f in manifest.inputs:
        r = by_file.get(f.file_index, Counter())
        kept = entries.get(f.file_index, 0)
        oov = r.get("oov_entries_dropped", 0)
        rows.append(
            {
                "file": f.path,
                "cells_read": r.get("cells_read", 0),
                "written": r.get("written_train", 0) + r.get("written_valid", 0),
                "genes_outside_vocabulary": r.get("oov_genes", 0),
                "oov_rate": oov / max(oov + kept, 1),
                "bytes": f.bytes,
            }
        )
    return rows


_GENE_KEYS = ("genes_direct", "genes_via_map", "genes_ambiguous", "genes_unmapped", "genes_colliding")


def _gene_ids_per_file(manifest: TokenizeManifest) -> dict[str, dict[str, int]]:
    """How each input's genes matched the vocabulary (present when `gene_id_map` was used)."""
    paths = {f.file_index: f.path for f in manifest.inputs}
    out: dict[str, dict[str, int]] = {}
    for unit in manifest.units:
        if "genes_via_map" in unit:
            row = out.setdefault(paths[unit["file_index"]], {k: unit[k] for k in _GENE_KEYS} | {"entries_summed": 0})
            row["entries_summed"] += unit.get("colliding_entries_summed", 0)
    return out


def _largest(counts: dict[str, int]) -> str:
    """`name (n), ...` of the `_TOP` largest counts, then how many more (escaped for the page)."""
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    shown = ", ".join(f"{html.escape(k)} ({n:,})" for k, n in ranked[:_TOP])
    return shown + (f", and {len(ranked) - _TOP:,} more" if len(ranked) > _TOP else "")


def _non_integer_html(found: dict[str, int] | None) -> str:
    """A warning naming the inputs whose counts are not whole numbers (nothing when all are)."""
    if not found:
        return ""
    return (
        f"<p style='color:#a40'><b>Not raw counts:</b> {sum(found.values()):,} count value(s) are not whole "
        f"numbers, in {len(found):,} input file(s): {_largest(found)}. They were tokenized as they are; the recipe "
        "expects raw counts (normalised or log-transformed data changes what the model learns).</p>"
    )


def _held_out_html(held: dict[str, Any] | None) -> str:
    """One paragraph naming the groups a group split holds out (nothing for a per-cell split)."""
    if not held:
        return ""
    return (
        f"<p>valid holds {len(held['groups']):,} whole group(s) of <code>{html.escape(str(held['by']))}</code> "
        f"(cells written): {_largest(held['groups'])}.</p>"
    )


def _page(stats: dict[str, Any], manifest: TokenizeManifest, dist: dict[str, dict[str, ValueCounts]]) -> str:
    name = stats["dataset_name"] or "cellcorpus corpus"
    sections = [
        f"<h1>{html.escape(str(name))}</h1>",
        f"<p class=muted>written by cellcorpus {html.escape(stats['tool_version'])}; settings digest "
        f"{html.escape(str(stats['settings_hash']))}, run digest {html.escape(stats['config_hash'])}</p>",
        "<h2>What went in</h2>",
        f"<p>{stats['inputs']:,} input file(s), {stats['input_cells']:,} cells.</p>",
        _non_integer_html(stats.get("non_integer_values")),
        _table(
            ["file", "cells read", "cells written", "genes outside vocabulary", "OOV rate", "size"],
            [
                [
                    r["file"],
                    r["cells_read"],
                    r["written"],
                    r["genes_outside_vocabulary"],
                    f"{r['oov_rate']:.2%}",
                    human_bytes(r["bytes"]),
                ]
                for r in stats["per_file"]
            ],  # fmt: skip
        ),
        "<h2>From cells read to training samples</h2>",
        _funnel_svg([(s["step"], s["cells"], _kind(s["step"])) for s in stats["funnel"]]),
        _held_out_html(stats.get("held_out_groups")),
        _duplicates_html(stats.get("duplicates")),
        "<h2>Cells, as a model sees them</h2>",
        _histogram_svg(
            {s: d["genes_per_cell"] for s, d in dist.items()},
            "Genes per cell (without special tokens such as CLS), against common context lengths",
            "genes per cell",
            marks=CONTEXT_LENGTHS,
        ),
        _table(
            ["split", "cells", "median genes", "99th pct genes", *[f"> {c:,} tokens" for c in CONTEXT_LENGTHS]],
            [
                [
                    s,
                    v["cells"],
                    f"{v['genes_per_cell'].get('q50', 0):,.0f}",
                    f"{v['genes_per_cell'].get('q99', 0):,.0f}",
                    *v["over_context"].values(),
                ]
                for s, v in stats["splits"].items()
            ],  # fmt: skip
        ),
        _histogram_svg(
            {s: d["counts_per_cell"] for s, d in dist.items()},
            "Total counts per cell (log axis, labels in counts)",
            "total counts per cell",
            log=True,
        )
        if any(d["counts_per_cell"].n for d in dist.values())
        else "<p>The encoding writes no counts: no counts per cell to show.</p>",
        _mito_html(stats["mito_share"], dist),
        "<h2>Vocabulary coverage</h2>",
        f"<p>{stats['vocabulary']['seen']:,} of {stats['vocabulary']['gene_tokens']:,} gene tokens of the "
        f"vocabulary occur in the corpus ({stats['vocabulary']['share_seen']:.1%}).</p>",
    ]
    if stats["gene_ids_per_file"]:
        keys = [*_GENE_KEYS, "entries_summed"]
        sections += [
            "<h2>Gene ids per input file</h2>",
            _table(
                ["file", *[k.replace("_", " ") for k in keys]],
                [[p, *(row[k] for k in keys)] for p, row in stats["gene_ids_per_file"].items()],
            ),  # fmt: skip
        ]
    sections.append("<h2>Metadata composition</h2>")
    cells = sum(v["cells"] for v in stats["splits"].values())
    if stats.get("join_coverage"):
        rows = [[c, j["table"], j["cells_with_value"], f"{j['share']:.1%}" + ("" if j["share"] == 1 else " ⚠")]
                for c, j in stats["join_coverage"].items()]  # fmt: skip
        sections.append("<h3>Join coverage (cells with a value in each joined column)</h3>")
        sections.append(_table(["column", "from", "cells with a value", "share"], rows))
    for col, top in stats["metadata_top_values"].items():
        sections.append(_bars_svg([(v, n) for v, n in top], cells, f"{col}: the {len(top)} most frequent values"))
    sections.append("<h2>Output</h2>")
    if stats["mds"]:
        sections.append(
            _table(
                ["MDS split", "samples", "shards", "size on disk", "compression ratio", "dropped by min_length"],
                [
                    [
                        s,
                        v["samples"],
                        v["shards"],
                        human_bytes(v["bytes"]),
                        f"{v['raw_bytes'] / max(v['bytes'], 1):.2f}x",
                        v["dropped_min_length"],
                    ]
                    for s, v in stats["mds"].items()
                ],  # fmt: skip
            )
        )
    arrow = [[s, sum(r.n_cells for r in recs), len(recs), human_bytes(sum(r.bytes for r in recs))]
             for s, recs in manifest.splits.items()]  # fmt: skip
    sections.append(_table(["Arrow split", "cells", "data files", "size"], arrow))
    verify = stats["verify"]
    if verify:
        n_checks = sum(c["checked"] for c in verify["checks"].values())
        n_failed = sum(c["failed"] for c in verify["checks"].values())
        status = "all passed" if verify["ok"] else f"{n_failed:,} FAILED"
        sections.append(
            f"<p><b>verify</b>: {len(verify['checks'])} kinds of check over {n_checks:,} items, {status}.</p>"
        )
    else:
        sections.append("<p><b>verify</b>: not run on this output yet (<code>cellcorpus verify CONFIG</code>).</p>")
    sections.append("<p class=muted>The numbers on this page are in <code>stats.json</code>.</p>")
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>"
        + html.escape(f"{name} — cellcorpus report")
        + f"</title><style>{_CSS}</style></head><body>"
        + "".join(sections)
        + "</body></html>"
    )


def _kind(step: str) -> str:
    return "in" if step == "cells read" else ("drop" if step.startswith("dropped") else "out")
