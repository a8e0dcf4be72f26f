"""`run` checks the whole config once, up front, and each note is said once (issue 21: preflight ran three times)."""

from __future__ import annotations

from cellcorpus.config import load_config
from cellcorpus.pipeline import run_pipeline
from cellcorpus.stages import preflight as preflight_module
from tests._utils import random_corpus


def test_run_checks_the_config_once_and_says_each_note_once(tmp_path, write_config, monkeypatch):
    calls = []
    real = preflight_module._preflight

    def counting(plan, source):
        calls.append(plan.command)
        return real(plan, source)

    monkeypatch.setattr(preflight_module, "_preflight", counting)
    random_corpus(tmp_path, n_files=1, n_cells=60, seed=1)
    cfg = load_config(write_config(tmp_path, **{"mds.size_limit": 1 << 16}))  # a legal setting with a note
    summaries = list(run_pipeline(cfg))
    assert calls == ["run"]
    notes = [n for s in summaries for n in s.notes if "mds.size_limit" in n]
    assert notes == ["mds.size_limit is 65,536 bytes: shards will hold only a few cells each"]
    calls.clear()
    from cellcorpus.stages.mds import run_mds

    run_mds(cfg)  # outside `run`: the stage checks for itself
    assert calls == ["mds"]


def test_run_resolves_the_config_once_for_every_stage(tmp_path, write_config, monkeypatch):
    """Issue 21: one plan per command. `run` derives every folder from the config once (`Layout.of`), and every
    stage, the fused MDS export included, runs with that plan's layout and executor."""
    from cellcorpus import plan as plan_module
    from cellcorpus.layout import Layout
    from cellcorpus.stages import mds_unit

    resolved, seen = [], []
    real_of, real_identity = Layout.of.__func__, mds_unit.mds_identity

    def counting_of(cls, cfg):
        resolved.append(cfg)
        return real_of(cls, cfg)

    def recording_identity(plan):
        seen.append(plan.layout)
        return real_identity(plan)

    monkeypatch.setattr(Layout, "of", classmethod(counting_of))
    monkeypatch.setattr(mds_unit, "mds_identity", recording_identity)
    random_corpus(tmp_path, n_files=1, n_cells=60, seed=1)
    cfg = load_config(write_config(tmp_path))
    list(run_pipeline(cfg, num_proc=1))
    assert len(resolved) == 1
    assert seen and all(layout is seen[0] for layout in seen)  # the fused export and the mds stage: one layout
    one = plan_module.plan_for(cfg, "tokenize", num_proc=3)
    assert plan_module.plan_for(one, "verify") is one  # a plan passed to a stage is used as it is
    assert one.executor.num_proc == 3 and one.layout.parts == tmp_path / "work" / "parts"
