"""`run` checks the whole config once, up front, and each note is said once (issue 21: preflight ran three times)."""

from __future__ import annotations

from cellcorpus.config import load_config
from cellcorpus.pipeline import run_pipeline
from cellcorpus.stages import preflight as preflight_module
from tests._utils import random_corpus


def test_run_checks_the_config_once_and_says_each_note_once(tmp_path, write_config, monkeypatch):
    calls = []
    real = preflight_module._preflight

    def counting(cfg, spec, command, source):
        calls.append(command)
        return real(cfg, spec, command, source)

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
