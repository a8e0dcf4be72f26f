"""`cellcorpus run` and `cellcorpus demo`: the stages in order, each skipping completed work."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from cellcorpus.config import Config, configs_root, load_config
from cellcorpus.exec.runner import Reporter, executor_session, warm_up
from cellcorpus.plan import Plan, plan_for
from cellcorpus.stages.base import StageSummary, stage_locks

if TYPE_CHECKING:
    from cellcorpus.stages.dedup import DedupReport
    from cellcorpus.stages.mix import Mix

__all__ = [
    "STAGES",
    "run_pipeline",
    "iter_pipeline",
    "run_demo",
    "packaged_config",
    "shipped_configs",
    "DEMO_CONFIGS",
    "demo_mix",
    "demo_dedup",
]

DEMO_CONFIGS = (
    "tahoe_x1_v2/tahoe_100m.yaml",
    "tahoe_x1_v2/scbasecamp.yaml",
    "tahoe_x1_v2/cellxgene_2025_01_21.yaml",
    "geneformer/tahoe_100m_geneformer.yaml",  # the same plates as a Geneformer V2 corpus
)


def packaged_config(name: str) -> Path:
    """Path of a config shipped with the package (the repository's `configs/`)."""
    return configs_root() / name


def _vocab(plan: Plan, reporter: Reporter | None) -> StageSummary:
    from cellcorpus.stages.vocab import run_vocab

    return run_vocab(plan)


def _drugs(plan: Plan, reporter: Reporter | None) -> StageSummary:
    from cellcorpus.stages.drugs import run_drugs

    return run_drugs(plan)


def _stats(plan: Plan, reporter: Reporter | None) -> StageSummary:
    from cellcorpus.stages.stats import run_stats

    return run_stats(plan, plan.executor, reporter)


def _tokenize(plan: Plan, reporter: Reporter | None) -> StageSummary:
    from cellcorpus.stages.mds_unit import fused_export
    from cellcorpus.stages.tokenize import run_tokenize

    # the Arrow pass also feeds the MDS export, which the MDS side writes and records
    return run_tokenize(plan, plan.executor, reporter, export=lambda stage_hash: fused_export(plan, stage_hash))


def _mds(plan: Plan, reporter: Reporter | None) -> StageSummary:
    from cellcorpus.stages.mds import run_mds

    return run_mds(plan, plan.executor, reporter)


def _verify(plan: Plan, reporter: Reporter | None) -> StageSummary:
    from cellcorpus.stages.verify import run_verify, summary

    return summary(run_verify(plan, plan.executor, reporter))


def _dedup(plan: Plan, reporter: Reporter | None) -> StageSummary | None:
    """Duplicates within the corpus, when its cells' fingerprints are recorded (else not a stage of this run)."""
    from cellcorpus.stages.dedup import run_dedup

    if not plan.cfg.need("huggingface").fingerprints:
        return None
    found = run_dedup(plan.cfg)
    counts = {"cells": found.cells, "duplicate cells": found.duplicate_cells, "groups of equal cells": found.groups}
    return StageSummary("dedup", counts=counts, outputs=dict(found.id_lists))


def _report(plan: Plan, reporter: Reporter | None) -> StageSummary:
    from cellcorpus.stages.report import run_report

    return run_report(plan, plan.executor, reporter)


# (name, config section that enables it, runner): the order `run` follows. Adding a stage = one row.
STAGES: tuple[tuple[str, str, Callable[[Plan, Reporter | None], StageSummary | None]], ...] = (
    ("vocab", "vocab", _vocab),
    ("drugs", "drugs", _drugs),
    ("stats", "stats", _stats),  # before tokenize: Geneformer's medians may be its output
    ("tokenize", "huggingface", _tokenize),
    ("mds", "mds", _mds),
    ("verify", "huggingface", _verify),
    ("dedup", "huggingface", _dedup),  # None (not run) without huggingface.fingerprints
    ("report", "huggingface", _report),
)


def run_pipeline(
    cfg: Config,
    *,
    num_proc: int | None = None,
    dask: str | None = None,
    reporter: Reporter | None = None,
    append: bool = False,
) -> list[StageSummary]:
    """Run the STAGES whose section the config has, in order, now; the stages' summaries (as `cellcorpus run`).
    `append=True`: new input files are added to the finished corpus (`cellcorpus run --append`).

    Works from a script without `if __name__ == "__main__":` too (exec/local.main_not_rerun). To act on each
    summary as its stage ends, iterate `iter_pipeline` instead."""
    return list(iter_pipeline(cfg, num_proc=num_proc, dask=dask, reporter=reporter, append=append))


def iter_pipeline(
    cfg: Config,
    *,
    num_proc: int | None = None,
    dask: str | None = None,
    reporter: Reporter | None = None,
    append: bool = False,
) -> Iterator[StageSummary]:
    """The STAGES whose section the config has, in order; yields each stage's summary as it ends (a stage runs
    when the previous summary has been taken).

    The config is resolved once into a plan (paths, executor) that every stage runs with, and checked once
    (preflight), so a setting the MDS stage would reject stops the run before tokenization, not after it. One
    worker pool (or Dask cluster) serves every stage, sized by `num_proc` or the largest `num_proc` of the
    config's sections.
    """
    from cellcorpus.stages.preflight import preflight, preflight_once

    plan = plan_for(cfg, "run", num_proc=num_proc, dask=dask, append=append)  # resolved once: every stage runs with it
    # locked first (a second run stops before it writes); the whole config checked once, for every stage
    with stage_locks(plan, "run"), executor_session(), preflight_once():
        preflight(plan)
        if cfg.huggingface is not None:
            warm_up(plan.executor, ("cellcorpus.stages.tokenize",))  # workers start while vocab and inputs are checked
        for _, section, runner in STAGES:
            if getattr(cfg, section) is not None and (summary := runner(plan, reporter)) is not None:
                yield summary


def run_demo(
    directory: str | Path, *, num_proc: int | None = None, reporter: Reporter | None = None
) -> Iterator[tuple[str, Iterator[StageSummary]]]:
    """Write the synthetic atlas under `directory`, then (lazily: the caller names each dataset before its
    stages run) the shipped configs on it, and the Tahoe plates once more held out by whole samples."""
    from cellcorpus.demo import make_demo_atlas

    directory = Path(directory).resolve()
    make_demo_atlas(directory)
    for name in DEMO_CONFIGS:
        cfg = _demo_config(name, directory)
        if cfg.drugs is not None and importlib.util.find_spec("rdkit") is None:
            # the demo runs on a plain install: fingerprints need the optional RDKit, so say so and go on
            cfg = cfg.model_copy(update={"drugs": None})
            yield name, _with_note(iter_pipeline(cfg, num_proc=num_proc, reporter=reporter))
        else:
            yield name, iter_pipeline(cfg, num_proc=num_proc, reporter=reporter)
    shipped, label, overrides = DEMO_GROUP_SPLIT
    yield label, iter_pipeline(_demo_config(shipped, directory, overrides), num_proc=num_proc, reporter=reporter)


# the Tahoe plates again, held out by whole samples (`split_parameters.by`): a split that does not leak a
# sample's cells into training (the shipped config splits cell by cell, as the Tahoe-x1 recipe does)
DEMO_GROUP_SPLIT = (
    "tahoe_x1_v2/tahoe_100m.yaml",
    "tahoe_100m, valid held out by sample",
    (
        "huggingface.merged_dataset_root=${output_root}/tahoe_by_sample",
        "huggingface.output_root=${output_root}/work/tahoe_by_sample",
        "huggingface.split_parameters.key=id",
        "huggingface.split_parameters.by=sample",
        "huggingface.split_parameters.test_size=0.1",
        "huggingface.fingerprints=false",
        "mds=null",
        "drugs=null",
    ),
)
DEMO_MIX = DEMO_CONFIGS[:3]  # the three Tahoe-x1 corpora: one vocabulary, one encoding
# the same plates built twice (Tahoe-x1, Geneformer), for `dedup` (their configs record fingerprints)
DEMO_DEDUP = ("tahoe_x1_v2/tahoe_100m.yaml", "geneformer/tahoe_100m_geneformer.yaml")


def _demo_config(name: str, directory: Path, overrides: tuple[str, ...] = ()) -> Config:
    return load_config(packaged_config(name), [f"output_root={directory}", *overrides])


def demo_dedup(directory: str | Path) -> DedupReport:
    """The demo's Tahoe-x1 corpus against its Geneformer corpus of the same plates (`cellcorpus dedup`): the
    cells both hold, found by content across two encodings and two vocabularies."""
    from cellcorpus.stages.dedup import run_dedup

    directory = Path(directory).resolve()
    ours, other = (_demo_config(n, directory) for n in DEMO_DEDUP)
    return run_dedup(ours, [other], names=[Path(DEMO_DEDUP[1]).stem])


def demo_mix(directory: str | Path) -> tuple[Mix, Path]:
    """The demo's training mixture of its three Tahoe-x1 corpora, one share each (`cellcorpus mix`), written to
    `directory/mix`: (the Mix, the streams file)."""
    from cellcorpus.stages.mix import mix_corpora, write_mix

    directory = Path(directory).resolve()
    names = [Path(n).stem for n in DEMO_MIX]
    configs: list[str | Path | Config] = [_demo_config(n, directory) for n in DEMO_MIX]
    mixed = mix_corpora(configs, names=names, proportions=dict.fromkeys(names, 1.0))
    streams, _ = write_mix(mixed, directory / "mix")
    return mixed, streams


def _with_note(summaries: Iterator[StageSummary]) -> Iterator[StageSummary]:
    yield StageSummary(
        "drugs",
        skipped=False,
        notes=["RDKit is not installed, so the drug fingerprints were skipped: pip install 'cellcorpus[chem]'"],
    )
    yield from summaries


def shipped_configs() -> list[str]:
    """Names of the configs shipped in the package (`tahoe_x1_v2/tahoe_100m.yaml`, ...), sorted."""
    root = configs_root()
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*.yaml"))
