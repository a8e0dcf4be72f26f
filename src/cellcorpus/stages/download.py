"""`cellcorpus download SOURCE CONFIG`: bucket sources (scbasecamp, tahoe) and the Census (cellxgene)."""

from __future__ import annotations

from pathlib import Path

from cellcorpus.config import Config, RemoteSourceConfig, config_hash
from cellcorpus.errors import ConfigError
from cellcorpus.exec.runner import ExecutorSpec, Reporter, run_units
from cellcorpus.manifest import write_manifest
from cellcorpus.stages.base import StageSummary
from cellcorpus.stages.preflight import preflight

__all__ = ["SOURCES", "run_download"]

SOURCES = ("cellxgene", "scbasecamp", "tahoe")


def _download_bucket(src: RemoteSourceConfig, name: str, spec: ExecutorSpec, reporter: Reporter | None) -> StageSummary:
    from cellcorpus.sources.remote import fetch_unit, plan_download

    units = plan_download(src, name)
    # No ledger: a cached file of the listed size *is* the completion record (fetch_unit skips it).
    done = run_units(fetch_unit, units, None, None, spec, description=f"download {name}", reporter=reporter)
    results = [done[u.unit_id] for u in units]
    write_manifest(
        Path(src.output_root) / "download_manifest.json",
        stage=f"download-{name}",
        config_hash=config_hash(src),
        source_url=src.url,
        files=[{"remote": u.path, "local": u.dest, "bytes": u.size} for u in units],
    )
    counts = {
        "files": len(units),
        "fetched now": sum(r.counts["fetched"] for r in results),
        "bytes": sum(u.size for u in units),
    }
    return StageSummary(f"download {name}", counts=counts, outputs={"folder": src.output_root})


def run_download(
    source: str, cfg: Config, spec: ExecutorSpec | None = None, reporter: Reporter | None = None
) -> StageSummary:
    """Download one source named in the config (its section holds URL, cache folder and workers)."""
    if source not in SOURCES:
        raise ConfigError(f"unknown source '{source}'", hint=f"one of: {', '.join(SOURCES)}")
    section = cfg.need(source)
    spec = spec or ExecutorSpec.resolve(cfg, section.num_proc)
    preflight(cfg, spec, "download", source=source)
    if source == "cellxgene":
        from cellcorpus.sources.census import run_census_download

        return run_census_download(cfg, spec, reporter)
    return _download_bucket(section, source, spec, reporter)
