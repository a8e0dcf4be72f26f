"""`cellcorpus run` and `cellcorpus demo`: the stages in order, each skipping completed work."""

from __future__ import annotations

from collections.abc import Iterator
from importlib import resources
from pathlib import Path

from cellcorpus.config import Config, load_config
from cellcorpus.exec.runner import ExecutorSpec, Reporter
from cellcorpus.stages.base import StageSummary

__all__ = ["run_pipeline", "run_demo", "packaged_config", "DEMO_CONFIGS"]

DEMO_CONFIGS = ("tahoe_x1_v2/tahoe_100m.yaml", "tahoe_x1_v2/scbasecamp.yaml", "tahoe_x1_v2/cellxgene_2025_01_21.yaml")


def packaged_config(name: str) -> Path:
    """Path of a config shipped with the package (the repository's `configs/`)."""
    return Path(str(resources.files("cellcorpus") / "configs" / name))


def run_pipeline(
    cfg: Config, *, num_proc: int | None = None, dask: str | None = None, reporter: Reporter | None = None
) -> Iterator[StageSummary]:
    """vocab -> drugs -> tokenize -> mds -> verify -> report, for the sections present; yields each stage's summary.

    The whole config is checked first (preflight), so a setting the MDS stage would reject stops the run
    before tokenization, not after it.
    """
    from cellcorpus.stages.preflight import preflight

    hf_proc = cfg.huggingface.num_proc if cfg.huggingface else 1
    preflight(cfg, ExecutorSpec.resolve(cfg, hf_proc, num_proc, dask), "run")
    if cfg.vocab is not None:
        from cellcorpus.stages.vocab import run_vocab

        yield run_vocab(cfg)
    if cfg.drugs is not None:
        from cellcorpus.stages.drugs import run_drugs

        yield run_drugs(cfg)
    if cfg.huggingface is not None:
        from cellcorpus.stages.tokenize import run_tokenize

        yield run_tokenize(cfg, ExecutorSpec.resolve(cfg, cfg.huggingface.num_proc, num_proc, dask), reporter)
    if cfg.mds is not None:
        from cellcorpus.stages.mds import run_mds

        yield run_mds(cfg, ExecutorSpec.resolve(cfg, cfg.mds.num_proc, num_proc, dask), reporter)
    if cfg.huggingface is not None:
        from cellcorpus.stages.verify import run_verify, summary

        yield summary(run_verify(cfg, ExecutorSpec.resolve(cfg, cfg.huggingface.num_proc, num_proc, dask), reporter))
        from cellcorpus.stages.report import run_report

        yield run_report(cfg)


def run_demo(
    directory: str | Path, *, num_proc: int | None = None, reporter: Reporter | None = None
) -> Iterator[tuple[str, list[StageSummary]]]:
    """Write the synthetic atlas under `directory` and run the three shipped v2 configs on it."""
    from cellcorpus.demo import make_demo_atlas

    directory = Path(directory).resolve()
    make_demo_atlas(directory)
    for name in DEMO_CONFIGS:
        cfg = load_config(packaged_config(name), [f"output_root={directory}"])
        yield name, list(run_pipeline(cfg, num_proc=num_proc, reporter=reporter))
