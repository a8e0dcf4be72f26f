"""The runner directly: skipped units are shown as done (never as speed), failures stop with the unit
named and the cause's exit code, finished units are kept for the rerun."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import pytest

from cellcorpus.errors import ConfigError, InputError, UnitFailed
from cellcorpus.exec.local import WORKER_ENV
from cellcorpus.exec.runner import ExecutorSpec, run_units
from cellcorpus.manifest import Ledger, UnitResult


@dataclass(frozen=True, order=True)
class _Unit:
    unit_id: str
    path: str
    n: int


class _Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def start(self, description: str, total_units: int, total_cells: int) -> None:
        self.calls.append(("start", total_units, total_cells))

    def advance(self, units: int, cells: int, *, skipped: bool = False) -> None:
        self.calls.append(("advance", units, cells, skipped))

    def stop(self) -> None:
        self.calls.append(("stop",))


def _work(unit: _Unit, fail_at: str | None) -> UnitResult:
    if unit.unit_id == fail_at:
        raise InputError(f"{unit.path}: broken")
    if fail_at == "config" and unit.unit_id == "u2":
        raise ConfigError("huggingface.gene_col: missing in this file")
    return UnitResult(unit.unit_id, {"cells": unit.n})


UNITS = [_Unit(f"u{i}", f"/data/f{i}.h5ad", 10 * (i + 1)) for i in range(5)]


def test_resumed_units_count_as_done_not_as_processed(tmp_path):
    ledger = Ledger(tmp_path / "units", "h")
    for u in UNITS[:3]:
        ledger.record(UnitResult(u.unit_id, {"cells": u.n}))
    rep = _Recorder()
    done = run_units(_work, UNITS, None, ledger, ExecutorSpec(), description="t", cells_of=lambda u: u.n, reporter=rep)
    assert sorted(done) == [u.unit_id for u in UNITS]
    assert rep.calls[0] == ("start", 5, 150)
    assert rep.calls[1] == ("advance", 3, 60, True)  # the three recorded units, flagged as skipped
    assert [c for c in rep.calls[2:-1]] == [("advance", 1, 40, False), ("advance", 1, 50, False)]


def test_failure_names_the_unit_keeps_finished_units_and_resumes(tmp_path):
    ledger = Ledger(tmp_path / "units", "h")
    with pytest.raises(UnitFailed, match=r"unit u3 \(/data/f3\.h5ad\) failed: /data/f3\.h5ad: broken") as info:
        run_units(_work, UNITS, "u3", ledger, ExecutorSpec(), description="t")
    assert info.value.exit_code == 1
    assert sorted(ledger.done()) == ["u0", "u1", "u2"]
    ran: list[str] = []

    def again(unit: _Unit, ctx: None) -> UnitResult:
        ran.append(unit.unit_id)
        return _work(unit, ctx)

    run_units(again, UNITS, None, ledger, ExecutorSpec(), description="t")
    assert ran == ["u3", "u4"]


def test_a_config_error_inside_a_unit_keeps_exit_code_2(tmp_path):
    with pytest.raises(UnitFailed) as info:
        run_units(_work, UNITS, "config", None, ExecutorSpec(), description="t")
    assert info.value.exit_code == 2 and "huggingface.gene_col" in str(info.value)


def test_damaged_completion_record_is_redone(tmp_path):
    ledger = Ledger(tmp_path / "units", "h")
    ledger.record(UnitResult("u0", {"cells": 10}))
    (tmp_path / "units" / "u0.json").write_text('{"unit_id": "u0", "cou')
    assert ledger.done() == {}


def test_other_settings_records_are_refused(tmp_path):
    Ledger(tmp_path / "units", "old").record(UnitResult("u0"))
    with pytest.raises(ConfigError, match="holds work from a different config"):
        Ledger(tmp_path / "units", "new").done()


def test_one_pool_per_command(tmp_path, monkeypatch):
    """A shuffled `run` (tokenize, two shuffles, mds, verify) opens one worker pool, not five."""
    from typer.testing import CliRunner

    from cellcorpus.cli import app
    from cellcorpus.exec import local
    from tests._utils import base_config, random_corpus, set_dotted

    opened = []
    real = local.local_executor

    def counting(num_proc, direct="auto"):
        opened.append(num_proc)
        return real(num_proc, direct)

    monkeypatch.setattr(local, "local_executor", counting)
    random_corpus(tmp_path, n_cells=200)
    cfg = base_config(tmp_path)
    set_dotted(cfg, "huggingface.split_parameters.shuffle", True)
    set_dotted(cfg, "huggingface.shuffle_bucket_cells", 50)
    import yaml

    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    result = CliRunner().invoke(app, ["run", str(tmp_path / "c.yaml"), "--num-proc", "2"])
    assert result.exit_code == 0, result.output
    assert opened == [2]


def test_in_flight_window_and_cancel_on_failure(tmp_path, monkeypatch):
    """At most 4 x workers units are submitted at once; after a failure, queued units are cancelled, never run,
    and units that finished are kept in the ledger."""
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor
    from contextlib import contextmanager

    from cellcorpus.exec import runner

    lock = threading.Lock()
    state = {"in_flight": 0, "max": 0}
    started: list[str] = []

    class Counting(ThreadPoolExecutor):
        def submit(self, fn, *args, **kwargs):
            with lock:
                state["in_flight"] += 1
                state["max"] = max(state["max"], state["in_flight"])
            fut = super().submit(fn, *args, **kwargs)
            fut.add_done_callback(lambda f: state.__setitem__("in_flight", state["in_flight"] - 1))
            return fut

    @contextmanager
    def two_threads(spec):
        ex = Counting(max_workers=2)
        try:
            yield ex, 2
        finally:
            ex.shutdown(wait=True, cancel_futures=True)

    monkeypatch.setattr(runner, "_open_executor", two_threads)

    def work(unit: _Unit, ctx: None) -> UnitResult:
        with lock:
            started.append(unit.unit_id)
        if unit.unit_id == "u05":
            raise InputError(f"{unit.path}: broken")
        time.sleep(0.02)
        return UnitResult(unit.unit_id)

    units = [_Unit(f"u{i:02d}", f"/d/f{i}.h5ad", 1) for i in range(40)]
    ledger = Ledger(tmp_path / "units", "h")
    with pytest.raises(UnitFailed, match=r"unit u05"):
        run_units(work, units, None, ledger, ExecutorSpec(num_proc=2), description="t")
    assert 0 < state["max"] <= 8  # window = 4 x 2 workers, never 40 futures
    assert len(started) < 20  # the rest was never submitted or was cancelled while queued
    recorded = set(ledger.done())
    assert "u05" not in recorded and {"u00", "u01"} <= recorded
    assert recorded <= set(started)


def _modules_loaded(names):
    import sys

    return [n in sys.modules for n in names]


def test_warm_up_starts_every_worker_with_the_stage_imported():
    from cellcorpus.exec.runner import ExecutorSpec, executor_session, open_executor, warm_up

    spec = ExecutorSpec(num_proc=2)
    with executor_session():
        warm_up(spec, ("cellcorpus.stages.tokenize",))
        with open_executor(spec) as (ex, n):
            assert n == 2 and len(ex._processes) == 2  # both started before any unit was submitted
            done = [ex.submit(_modules_loaded, ("cellcorpus.stages.tokenize",)).result() for _ in range(4)]
    assert done == [[True]] * 4
    warm_up(spec, ("cellcorpus.stages.tokenize",))  # outside a session: nothing is started (and nothing leaks)


def _kernels_loaded():
    from cellcorpus.core.cell_kernels import _count, _scatter, _sums

    return [len(kernel.signatures) for kernel in (_sums, _scatter, _count)]


def test_warm_up_calls_a_named_function_after_the_import():
    """stats warms its workers with "cellcorpus.core.cell_kernels:load_kernels": each worker has numba's passes
    loaded (one signature each) before its first unit."""
    from cellcorpus.exec.runner import ExecutorSpec, executor_session, open_executor, warm_up

    spec = ExecutorSpec(num_proc=2)
    with executor_session():
        warm_up(spec, ("cellcorpus.stages.stats", "cellcorpus.core.cell_kernels:load_kernels"))
        with open_executor(spec) as (ex, _):
            loaded = [ex.submit(_kernels_loaded).result() for _ in range(4)]
    assert loaded == [[1, 1, 1]] * 4


def _recorded(sent, submit, fn, *args):
    sent.append(args)
    return submit(fn, *args)


def test_warm_up_sends_each_entry_once_per_session(monkeypatch):
    """`cellcorpus run` warms its workers for tokenize, then tokenize asks again: nothing is sent the second time;
    a new entry is sent to every worker; a new session starts afresh."""
    from cellcorpus.exec.runner import ExecutorSpec, executor_session, open_executor, warm_up

    spec = ExecutorSpec(num_proc=2)
    for _ in range(2):  # the second session warms again
        with executor_session():
            warm_up(spec, ("cellcorpus.stages.tokenize",))
            with open_executor(spec) as (ex, _n):
                sent: list = []
                monkeypatch.setattr(ex, "submit", functools.partial(_recorded, sent, ex.submit))
                warm_up(spec, ("cellcorpus.stages.tokenize",))
                assert sent == []
                warm_up(spec, ("cellcorpus.stages.tokenize", "cellcorpus.stages.stats"))
                assert [names for _fn, names in sent] == [("cellcorpus.stages.stats",)] * 2
                monkeypatch.undo()
                assert ex.submit(_modules_loaded, ("cellcorpus.stages.stats",)).result() == [True]


def test_a_pool_shut_down_with_a_worker_at_the_start_barrier_does_not_wait_for_it():
    """A refusal just after the pool started cancels start tasks not yet taken; a worker that took one waits at
    the start barrier for the others (here: one start task, as if the other's had been cancelled), and the
    shutdown must release it, not wait out the barrier's 300 s timeout."""
    import threading

    from cellcorpus.exec.local import _nothing, local_executor, one_per_worker

    pool = local_executor(2)
    held = pool.submit(one_per_worker, _nothing)  # one worker takes it and waits for the other
    t = threading.Thread(target=pool.shutdown, kwargs={"wait": True, "cancel_futures": True})
    t.start()
    t.join(timeout=120)
    assert not t.is_alive(), "the pool's shutdown waited for a worker held at the start barrier"
    assert held.cancelled() or held.result() is None  # released (or never taken), never an error


def _env(key):
    return os.environ.get(key)


@pytest.mark.parametrize(
    "key, default",
    [("MIMALLOC_PURGE_DELAY", "-1"), ("MALLOC_MMAP_MAX_", "0"), ("MALLOC_TRIM_THRESHOLD_", str(1 << 40))],
)
@pytest.mark.parametrize("user_value", [None, "50"])
def test_workers_start_with_the_allocator_settings_unless_the_user_set_one(monkeypatch, key, default, user_value):
    from cellcorpus.exec.runner import ExecutorSpec, open_executor

    if user_value is None:
        monkeypatch.delenv(key, raising=False)
    else:
        monkeypatch.setenv(key, user_value)
    with open_executor(ExecutorSpec(num_proc=2)) as (ex, _):
        seen = [ex.submit(_env, key).result() for _ in range(4)]
        assert os.environ.get(key) == user_value  # never put in the caller's environment, even while it runs
    assert seen == [user_value or default] * 4  # freed memory kept for reuse (read when the worker starts)
    assert os.environ.get(key) == user_value


def test_run_leaves_the_callers_environment_as_it_was(tmp_path, write_config, monkeypatch):
    """A notebook that runs cellcorpus keeps its own allocator settings (inline and with a pool)."""
    from cellcorpus.config import load_config
    from cellcorpus.pipeline import run_pipeline
    from tests._utils import random_corpus

    for key in WORKER_ENV:
        monkeypatch.delenv(key, raising=False)
    random_corpus(tmp_path, n_files=1, n_cells=40, seed=1)
    cfg = load_config(write_config(tmp_path))
    before = dict(os.environ)
    for num_proc in (1, 2):
        list(run_pipeline(cfg, num_proc=num_proc))
        assert dict(os.environ) == before


def _direct_mode_here():
    from cellcorpus.io import direct

    return direct._MODE


@pytest.mark.parametrize("num_proc", [1, 2])
def test_io_direct_reaches_the_workers_and_is_restored(num_proc):
    from cellcorpus.exec.runner import ExecutorSpec, open_executor
    from cellcorpus.io import direct

    with open_executor(ExecutorSpec(num_proc=num_proc, direct_io="off")) as (ex, _):
        assert [ex.submit(_direct_mode_here).result() for _ in range(3)] == ["off"] * 3
    assert direct._MODE == "auto"  # this process's mode as it was
