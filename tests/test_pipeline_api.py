"""`run_pipeline` from a notebook or a plain script (issue 24): it runs when called, and worker processes need
no `if __name__ == "__main__":` guard in the calling script."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from cellcorpus.config import load_config
from cellcorpus.pipeline import iter_pipeline, run_pipeline
from tests._utils import base_config, random_corpus

REPO = Path(__file__).parents[1]


def test_run_pipeline_runs_when_called(tmp_path):
    random_corpus(tmp_path, n_files=1, n_cells=50)
    cfg = load_config(base_config(tmp_path))
    summaries = run_pipeline(cfg)  # not iterated: it ran all the same
    assert (tmp_path / "merged" / "manifest.json").is_file()
    assert [s.stage for s in summaries] == ["tokenize", "mds", "verify", "report"]
    lazy = iter_pipeline(cfg)  # the streaming form runs a stage when its summary is taken
    assert next(lazy).skipped


def test_a_script_without_a_main_guard_runs_with_worker_processes(tmp_path):
    """Without the guard every spawned worker re-ran the script, and so started a pipeline of its own: the run
    died with BrokenProcessPool. The script here is run as a user runs it: `python script.py`."""
    script = tmp_path / "make_corpus.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import sys
            sys.path.insert(0, {str(REPO)!r})
            from pathlib import Path
            import cellcorpus
            from tests._utils import base_config, random_corpus

            root = Path({str(tmp_path / "out")!r})
            random_corpus(root, n_files=2, n_cells=200)
            done = cellcorpus.run_pipeline(cellcorpus.load_config(base_config(root)), num_proc=2)
            print("stages:", ",".join(s.stage for s in done))
            """
        )
    )
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip().endswith("stages: tokenize,mds,verify,report")
    assert "BrokenProcessPool" not in run.stderr
    assert sys.modules["__main__"] is not None  # (the caller's own __main__ is restored after a pool starts)


def test_the_callers_main_module_is_left_as_it_was(tmp_path):
    from cellcorpus.exec.local import local_executor

    main = sys.modules["__main__"]
    before = (getattr(main, "__file__", None), getattr(main, "__spec__", None))
    pool = local_executor(2)
    try:
        assert pool.submit(abs, -3).result() == 3
    finally:
        pool.shutdown()
    assert (getattr(main, "__file__", None), getattr(main, "__spec__", None)) == before
