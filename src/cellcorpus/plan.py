"""A command's plan: its config resolved once, before any stage runs.

Without it every stage re-derived the same things from the config: each folder from location keys (in
layout, sources and the stages), the executor from `num_proc`/`executor`/`io` (in every entry point), and
preflight ran per stage. A plan holds them resolved: the config's settings (each stage reads its own section),
the `Layout` (every folder), and the `ExecutorSpec` (where units run). `cellcorpus run` makes one plan and
hands it to every stage; a stage called on its own (`run_tokenize(cfg)`) makes its own with `plan_for`.
What exists only once earlier stages ran (the vocabulary, the inputs and their checksums, hence the stage's
identity) is resolved by the stage that needs it, once, at its start.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from cellcorpus.config import Config
from cellcorpus.errors import ConfigError
from cellcorpus.exec.runner import ExecutorSpec
from cellcorpus.layout import Layout

__all__ = ["Plan", "plan_for"]

# The section whose `num_proc` sizes each command's pool (`run`: the largest of huggingface's and mds's).
_POOL_SECTION = {
    "tokenize": "huggingface", "verify": "huggingface", "report": "huggingface", "mds": "mds", "stats": "stats",
}  # fmt: skip


@dataclass(frozen=True)
class Plan:
    """What one command runs with: the validated config, every folder, and the executor."""

    cfg: Config
    command: str
    layout: Layout
    executor: ExecutorSpec
    append: bool = False  # `--append`: tokenize adds new input files to a finished corpus (stages/tokenize_append.py)


def _pool_size(cfg: Config, command: str, source: str | None) -> int:
    if command == "run":
        return max([s.num_proc for s in (cfg.huggingface, cfg.mds, cfg.stats) if s is not None] or [1])
    section = source if command == "download" else _POOL_SECTION.get(command)
    found = getattr(cfg, section, None) if section else None
    return int(getattr(found, "num_proc", 1) or 1)


def plan_for(
    cfg: Config | Plan,
    command: str,
    spec: ExecutorSpec | None = None,
    *,
    num_proc: int | None = None,
    dask: str | None = None,
    source: str | None = None,
    append: bool = False,
) -> Plan:
    """The plan of `command` on `cfg` (a plan is passed through; `spec` replaces its executor).

    `num_proc` and `dask` are the command line's choices, over the config's: `num_proc` also sizes a
    `--dask local` cluster. `source`: the section `download` fetches. `append`: the command line's `--append`."""
    if isinstance(cfg, Plan):
        return cfg if spec is None or spec == cfg.executor else replace(cfg, executor=spec)
    if num_proc is not None and num_proc < 1:
        raise ConfigError(f"--num-proc: must be 1 or more, got {num_proc}")
    executor = spec or ExecutorSpec(
        num_proc=num_proc or _pool_size(cfg, command, source),
        dask=dask or cfg.executor.dask,
        dask_workers=num_proc or cfg.executor.dask_workers,
        direct_io=cfg.io.direct,
    )
    return Plan(cfg=cfg, command=command, layout=Layout.of(cfg), executor=executor, append=append)
