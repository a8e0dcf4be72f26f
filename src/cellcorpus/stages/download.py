"""`cellcorpus download SOURCE CONFIG`: bucket sources (scbasecamp, tahoe) and the Census (cellxgene)."""

from __future__ import annotations

import logging
from pathlib import Path

from cellcorpus.config import CellxgeneConfig, Config, RemoteSourceConfig, config_hash
from cellcorpus.errors import ConfigError, InputError
from cellcorpus.exec.runner import ExecutorSpec, Reporter, run_units
from cellcorpus.io.paths import join
from cellcorpus.io.vocab import load_vocab
from cellcorpus.manifest import DownloadManifest, Ledger, write_manifest
from cellcorpus.plan import Plan, plan_for
from cellcorpus.stages.base import StageSummary, locked
from cellcorpus.stages.preflight import preflight

__all__ = ["SOURCES", "run_download"]

SOURCES = ("cellxgene", "scbasecamp", "tahoe")
log = logging.getLogger(__name__)


def _download_bucket(
    cfg: Config, src: RemoteSourceConfig, name: str, spec: ExecutorSpec, reporter: Reporter | None
) -> StageSummary:
    from cellcorpus.sources.remote import fetch_unit, plan_download

    units = plan_download(src, name)
    # No ledger: a cached file of the listed size *is* the completion record (fetch_unit skips it).
    done = run_units(fetch_unit, units, None, None, spec, description=f"download {name}", reporter=reporter)
    results = [done[u.unit_id] for u in units]
    write_manifest(
        Path(src.output_root) / "download_manifest.json",
        DownloadManifest,
        stage=f"download-{name}",
        config_hash=config_hash(src),
        source_url=cfg.for_output(f"{name}.url", src.url),  # a URL from the environment: its reference
        files=[{"local": Path(u.dest).relative_to(src.output_root).as_posix(), "bytes": u.size} for u in units],
    )
    counts = {
        "files": len(units),
        "fetched now": sum(r.counts["fetched"] for r in results),
        "bytes": sum(u.size for u in units),
    }
    return StageSummary(f"download {name}", counts=counts, outputs={"folder": src.output_root})


def _download_census(cfg: Config, spec: ExecutorSpec, reporter: Reporter | None = None) -> StageSummary:
    """Select cells and genes, then fetch `chunk_<i>.h5ad` units in parallel (resumable: present chunks skip)."""
    from cellcorpus.sources.census import census_chunk_unit, plan_census, select_census

    cx: CellxgeneConfig = cfg.need("cellxgene")
    vocab_file = join(cfg.vocab.output_root, cx.vocab) if (cfg.vocab and cx.vocab) else cfg.need("vocab").vocab_file
    vocab = load_vocab(vocab_file)
    obs_ids, var_ids = select_census(cx, vocab)
    if len(obs_ids) == 0 or len(var_ids) == 0:
        raise InputError(f"Census selection is empty: {len(obs_ids)} cells, {len(var_ids)} genes")
    log.warning("Census %s: %d cells and %d genes selected", cx.census_uri or cx.version, len(obs_ids), len(var_ids))
    out = Path(cx.output_root)
    units = plan_census(obs_ids, var_ids, cx.chunk_size, out, cx.min_count_per_gene)
    work = config_hash(cx.model_dump(mode="json", exclude={"num_proc"}), len(obs_ids), len(var_ids))
    ledger = Ledger(out / ".units" / "download", work)
    done = run_units(
        census_chunk_unit, units, cx, ledger, spec,
        description=f"download cellxgene ({len(obs_ids):,} cells, {len(var_ids):,} genes)",
        cells_of=lambda u: u.n_cells, reporter=reporter,
        is_current=lambda u, r: Path(u.path).is_file(),
    )  # fmt: skip
    write_manifest(
        out / "download_manifest.json",
        DownloadManifest,
        stage="download-cellxgene",
        config_hash=work,
        census=cfg.for_output("cellxgene.census_uri", cx.census_uri) or cx.version,
        chunks=[{"file": Path(u.path).name, **done[u.unit_id].counts} for u in units],
    )
    return StageSummary(
        "download cellxgene",
        counts={"cells selected": len(obs_ids), "genes selected": len(var_ids), "chunks": len(units)},
        outputs={"folder": str(out)},
    )


@locked("download")
def run_download(
    source: str, cfg: Config | Plan, spec: ExecutorSpec | None = None, reporter: Reporter | None = None
) -> StageSummary:
    """Download one source named in the config (its section holds URL, cache folder and workers)."""
    if source not in SOURCES:
        raise ConfigError(f"unknown source '{source}'", hint=f"one of: {', '.join(SOURCES)}")
    plan = plan_for(cfg, "download", spec, source=source)  # (`locked` resolved it: this is that plan)
    cfg, spec = plan.cfg, plan.executor
    section = cfg.need(source)
    preflight(plan, source=source)
    if source == "cellxgene":
        return _download_census(cfg, spec, reporter)
    return _download_bucket(cfg, section, source, spec, reporter)
