"""`cellcorpus report`: what the corpus holds — stats.json, PNG plots and a one-page report.html.

Reads the manifests (cells in / filtered / written, inputs, shards) and streams the Arrow splits once
for per-cell distributions (genes per cell, counts per cell), one data file at a time.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np
import pyarrow.compute as pc

from cellcorpus.config import Config
from cellcorpus.errors import ConfigError
from cellcorpus.formats.arrow import read_arrow
from cellcorpus.io.atomic import write_json_atomic
from cellcorpus.io.paths import Publisher, local_copy
from cellcorpus.layout import REPORT_DIR, mds_publisher, tokenize_publisher
from cellcorpus.manifest import MdsManifest, TokenizeManifest
from cellcorpus.stages.base import StageSummary

__all__ = ["run_report"]

_QUANTILES = (0.0, 0.01, 0.1, 0.5, 0.9, 0.99, 1.0)


def _cell_distributions(out: Publisher, manifest: TokenizeManifest, has_cls: bool) -> dict[str, dict[str, np.ndarray]]:
    dist: dict[str, dict[str, np.ndarray]] = {}
    skip = 1 if has_cls else 0
    for split, records in manifest.splits.items():
        genes, counts = [], []
        for rec in records:
            with local_copy(out.url(f"{split}.dataset/{rec.path}")) as p:
                table = read_arrow(p)
                if table.num_rows == 0:
                    continue
                lengths = pc.list_value_length(table.column("genes")).to_numpy(zero_copy_only=False)
                exprs = table.column("expressions").combine_chunks()
                offsets = exprs.offsets.to_numpy().astype(np.int64)
                values = exprs.values.to_numpy()[offsets[0] : offsets[-1]].astype(np.float64)
                sums = np.add.reduceat(values, offsets[:-1] - offsets[0]) if len(values) else np.zeros(len(lengths))
                pad = values[offsets[:-1] - offsets[0]] if skip else 0.0
                genes.append(lengths - skip)
                counts.append(sums - pad)
        dist[split] = {
            "genes_per_cell": np.concatenate(genes) if genes else np.zeros(0),
            "counts_per_cell": np.concatenate(counts) if counts else np.zeros(0),
        }
    return dist


def _quantiles(x: np.ndarray) -> dict[str, float]:
    if not len(x):
        return {}
    return {f"q{int(q * 100):02d}": float(np.quantile(x, q)) for q in _QUANTILES} | {"mean": float(x.mean())}


def _plots(dist: dict, totals: dict, folder: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")  # no display: files only
    import matplotlib.pyplot as plt

    names = []
    for key, xlabel, log in (
        ("genes_per_cell", "genes per cell (without CLS)", False),
        ("counts_per_cell", "total counts per cell (log10)", True),
    ):
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for split, d in dist.items():
            x = d[key]
            if len(x):
                ax.hist(np.log10(np.maximum(x, 1)) if log else x, bins=60, alpha=0.6, label=f"{split} ({len(x):,})")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("cells")
        ax.legend()
        fig.tight_layout()
        fig.savefig(folder / f"{key}.png", dpi=100)
        plt.close(fig)
        names.append(f"{key}.png")
    fig, ax = plt.subplots(figsize=(6, 3.5))
    keys = [k for k in totals if k.startswith(("filtered_", "written_"))]
    ax.barh(keys, [totals[k] for k in keys])
    ax.set_xlabel("cells")
    fig.tight_layout()
    fig.savefig(folder / "cells_by_outcome.png", dpi=100)
    plt.close(fig)
    names.append("cells_by_outcome.png")
    return names


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


def _gene_table_html(per_file: dict[str, dict[str, int]]) -> str:
    if not per_file:
        return ""
    keys = [*_GENE_KEYS, "entries_summed"]
    head = "".join(f"<th>{html.escape(k.replace('_', ' '))}</th>" for k in ["file", *keys])
    body = "".join(
        f"<tr><td>{html.escape(path)}</td>" + "".join(f"<td>{row[k]:,}</td>" for k in keys) + "</tr>"
        for path, row in per_file.items()
    )
    return f"<h2>Gene ids per input file</h2><table border='1'><tr>{head}</tr>{body}</table>"


def run_report(cfg: Config) -> StageSummary:
    """Write `<merged_dataset_root>/report/{stats.json, *.png, report.html}` (local scratch for URL roots)."""
    hf = cfg.need("huggingface")
    out = tokenize_publisher(hf)
    manifest = out.read_manifest("manifest.json", TokenizeManifest)
    if manifest is None:
        raise ConfigError(
            f"nothing to report: no manifest in {hf.merged_dataset_root}", hint="run `cellcorpus tokenize`"
        )
    mds_manifest = mds_publisher(cfg.mds).read_manifest("manifest.json", MdsManifest) if cfg.mds else None
    dist = _cell_distributions(out, manifest, hf.add_cls_token)
    folder = out.local_dir / REPORT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    stats = {
        "dataset_name": manifest.dataset_name,
        "totals": manifest.totals,
        "inputs": len(manifest.inputs),
        "input_cells": sum(f.n_obs for f in manifest.inputs),
        "metadata_columns": manifest.metadata_columns,
        "splits": {
            s: {
                "cells": int(len(d["genes_per_cell"])),
                "genes_per_cell": _quantiles(d["genes_per_cell"]),
                "counts_per_cell": _quantiles(d["counts_per_cell"]),
            }
            for s, d in dist.items()
        },  # fmt: skip
        "mds": None
        if not mds_manifest
        else {
            s: {
                "samples": v.samples,
                "shards": len(v.shards),
                "dropped_min_length": v.dropped_min_length,
                "bytes": sum((sh["zip_data"] or sh["raw_data"])["bytes"] for sh in v.shards),
            }
            for s, v in mds_manifest.splits.items()
        },  # fmt: skip
    }
    stats["gene_ids_per_file"] = _gene_ids_per_file(manifest)
    write_json_atomic(folder / "stats.json", stats)
    plots = _plots(dist, manifest.totals, folder)
    rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{v:,}</td></tr>" for k, v in manifest.totals.items())
    page = (
        f"<html><head><meta charset='utf-8'><title>cellcorpus report</title></head><body>"
        f"<h1>{html.escape(str(stats['dataset_name'] or 'cellcorpus corpus'))}</h1>"
        f"<p>{stats['inputs']} input files, {stats['input_cells']:,} cells read.</p>"
        f"<table border='1'>{rows}</table>"
        + _gene_table_html(stats["gene_ids_per_file"])
        + "".join(f"<p><img src='{p}'></p>" for p in plots)
        + f"<pre>{html.escape(json.dumps(stats['splits'], indent=2))}</pre></body></html>"
    )
    (folder / "report.html").write_text(page)
    for p in sorted(folder.iterdir()):
        out.publish(p)
    return StageSummary(
        "report",
        counts={f"{s} cells": v["cells"] for s, v in stats["splits"].items()},
        outputs={"report": out.url(f"{REPORT_DIR}/report.html")},
    )
