"""Run a stage's pending units on an executor: skip done units, consume every result, fail fast.

Completion is recorded in the ledger by this (the submitting) process only after a unit returned,
so a crash never marks a unit done. The first failure cancels pending work and raises UnitFailed.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Executor, Future, wait
from contextlib import ExitStack, contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from cellcorpus.errors import UnitFailed
from cellcorpus.io.direct import direct_mode
from cellcorpus.manifest import Ledger

__all__ = ["Reporter", "ExecutorSpec", "open_executor", "executor_session", "run_units", "warm_up"]

log = logging.getLogger(__name__)


class Reporter(Protocol):
    """Progress sink; the CLI passes a rich progress bar, library callers may pass None."""

    def start(self, description: str, total_units: int, total_cells: int) -> None:
        """A stage of `total_units` units (`total_cells` cells) begins."""
        ...

    def advance(self, units: int, cells: int, *, skipped: bool = False) -> None:
        """`skipped=True`: units found complete from an earlier run (they count as done, not as speed)."""
        ...

    def stop(self) -> None:
        """The stage ended (finished or failed)."""
        ...


@dataclass(frozen=True)
class ExecutorSpec:
    """Where to run: `dask` None = local pool of `num_proc`; else a scheduler address or `local`."""

    num_proc: int = 1
    dask: str | None = None
    dask_workers: int = 2
    direct_io: str = "auto"  # `io.direct`, applied in this process while units run and in every worker


# per session: its exit stack, its executors by spec, and the modules each spec's workers were warmed with
_SESSION: ContextVar[
    tuple[ExitStack, dict[ExecutorSpec, tuple[Executor, int]], dict[ExecutorSpec, set[str]]] | None
] = ContextVar("cellcorpus_executor_session", default=None)


@contextmanager
def executor_session() -> Iterator[None]:
    """One pool (or Dask cluster) per command: executors opened inside the block are kept and reused by every
    later stage with the same spec, and shut down when the block ends. Starting a pool costs ~1 s and a
    LocalCluster ~3.5 s; a shuffled `run` used to open five of them.
    """
    with ExitStack() as stack:
        token = _SESSION.set((stack, {}, {}))
        try:
            yield
        finally:
            _SESSION.reset(token)


@contextmanager
def open_executor(spec: ExecutorSpec) -> Iterator[tuple[Executor, int]]:
    """(executor, number of workers) for the spec; shut down on exit, or at the end of the executor session."""
    session = _SESSION.get()
    if session is not None:
        stack, pools, _ = session
        if spec not in pools:
            pools[spec] = stack.enter_context(_open_executor(spec))
        yield pools[spec]
        return
    with _open_executor(spec) as pair:
        yield pair


@contextmanager
def _open_executor(spec: ExecutorSpec) -> Iterator[tuple[Executor, int]]:
    from cellcorpus.exec.local import local_executor

    with direct_mode(spec.direct_io):  # units run inline in this process too; restored afterwards
        if spec.dask:
            from cellcorpus.exec.dask import dask_executor

            with dask_executor(spec.dask, spec.dask_workers, spec.direct_io) as pair:
                yield pair
            return
        ex = local_executor(spec.num_proc, spec.direct_io)
        try:
            yield ex, spec.num_proc
        finally:
            ex.shutdown(wait=True, cancel_futures=True)


def _import_modules(names: tuple[str, ...]) -> None:
    for name in names:
        module, _, call = name.partition(":")
        loaded = importlib.import_module(module)
        if call:
            getattr(loaded, call)()


def warm_up(spec: ExecutorSpec, modules: Sequence[str]) -> None:
    """Start the session's local workers now, each importing `modules`, while this process goes on with its
    checks: a spawned worker otherwise starts (and imports ~0.5 s of modules) only when the first unit is
    submitted. An entry "package.module:function" also calls that function (no arguments) after the import:
    compiled kernels loaded before the first unit. Entries the session's workers were already warmed with are
    not sent again (`cellcorpus run` warms for tokenize, then tokenize itself asks). A no-op outside an executor
    session, for one process, or on Dask."""
    session = _SESSION.get()
    if spec.dask or spec.num_proc <= 1 or session is None:
        return
    warmed = session[2].setdefault(spec, set())
    todo = tuple(name for name in modules if name not in warmed)
    if not todo:
        return
    warmed.update(todo)
    from cellcorpus.exec.local import one_per_worker

    with open_executor(spec) as (ex, n):
        for _ in range(n):  # each worker takes exactly one (one_per_worker waits for the others)
            ex.submit(one_per_worker, _import_modules, todo)


class HasUnitId(Protocol):
    """What the runner needs of a unit's result: its id (UnitResult for recorded stages; verify's own)."""

    unit_id: str


R = TypeVar("R", bound=HasUnitId)


def run_units(
    fn: Callable[[Any, Any], R],
    units: Sequence[Any],
    context: Any,
    ledger: Ledger | None,
    spec: ExecutorSpec,
    *,
    description: str,
    cells_of: Callable[[Any], int] = lambda u: 0,
    reporter: Reporter | None = None,
    is_current: Callable[[Any, Any], bool] = lambda u, r: True,
    keep: Callable[[Any, Any], Any] | None = None,
) -> dict[str, R]:
    """Run `fn(unit, context)` for every unit not yet in `ledger`; return all results by unit id.

    With `ledger=None` every unit runs and nothing is recorded (read-only stages such as verify).
    A recorded unit for which `is_current(unit, record)` is False (its input changed) runs again.
    `keep(unit, result)`, called as each new result arrives (after it is recorded), returns what is kept of
    it: a stage folds bulky parts of results in as they come instead of holding all of them.
    """
    recorded = ledger.done() if ledger else {}
    done = {
        u.unit_id: recorded[u.unit_id] for u in units if u.unit_id in recorded and is_current(u, recorded[u.unit_id])
    }
    pending = [u for u in units if u.unit_id not in done]
    if reporter:
        reporter.start(description, len(units), sum(cells_of(u) for u in units))
        reporter.advance(len(units) - len(pending), sum(cells_of(u) for u in units if u.unit_id in done), skipped=True)
    if done and pending:
        log.info("%s: resuming, %d of %d units already complete", description, len(done), len(units))
    try:
        if pending:
            with open_executor(spec) as (ex, n_workers):
                # Bounded in-flight window: every worker busy with queued work, no thousands of futures.
                window = 4 * max(n_workers, 1)
                _consume(ex, window, fn, pending, context, ledger, done, cells_of, reporter, keep)
    finally:
        if reporter:
            reporter.stop()
    return done


def _consume(ex, window, fn, pending, context, ledger, done, cells_of, reporter, keep=None) -> None:
    it = iter(pending)
    inflight: dict[Future, Any] = {}

    def fill() -> None:
        while len(inflight) < window:
            unit = next(it, None)
            if unit is None:
                return
            inflight[ex.submit(fn, unit, context)] = unit

    def record(fut: Future, unit: Any) -> None:
        result = fut.result()
        if ledger:
            ledger.record(result)
        done[unit.unit_id] = keep(unit, result) if keep else result
        if reporter:
            reporter.advance(1, cells_of(unit))

    fill()
    while inflight:
        finished, _ = wait(list(inflight), return_when=FIRST_COMPLETED)
        for fut in sorted(finished, key=lambda f: inflight[f].unit_id):
            unit = inflight.pop(fut)
            try:
                record(fut, unit)
            except BaseException as exc:
                _drain(inflight, record)
                if isinstance(exc, KeyboardInterrupt):  # Ctrl-C reached a unit: the user's stop, not its failure
                    raise
                raise UnitFailed(unit.unit_id, getattr(unit, "path", "?"), exc) from exc
        fill()


def _drain(inflight: dict[Future, Any], record: Callable[[Future, Any], None]) -> None:
    """After a failure: keep (record) units that already finished cleanly, cancel the rest.

    Finished results are taken first because cancelling a finished Dask future discards its result;
    a pool only cancels queued work, so what is running there is waited for and kept too.
    """
    ordered = sorted(inflight.items(), key=lambda kv: kv[1].unit_id)
    for fut, unit in ordered:
        if fut.done():
            _record_quietly(fut, unit, record)
    for fut, _ in ordered:
        if not fut.done():
            fut.cancel()
    for fut, unit in ordered:
        if not fut.cancelled() and not fut.done():
            _record_quietly(fut, unit, record)


def _record_quietly(fut: Future, unit: Any, record: Callable[[Future, Any], None]) -> None:
    try:
        record(fut, unit)
    except BaseException as exc:  # the first failure is the one reported
        log.info("unit %s also failed: %s", unit.unit_id, exc)
