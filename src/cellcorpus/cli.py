"""The `cellcorpus` command: one thin command per stage; errors become one red line + exit code."""

from __future__ import annotations

import errno
import functools
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from cellcorpus._version import __version__
from cellcorpus.config import Config, load_config
from cellcorpus.errors import CellcorpusError
from cellcorpus.exec.runner import executor_session
from cellcorpus.log import setup_logging
from cellcorpus.plan import plan_for
from cellcorpus.stages.base import StageSummary

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Tokenized single-cell pretraining corpora.")
console = Console(stderr=True)
out = Console()

ConfigArg = Annotated[Path, typer.Argument(help="YAML config (seed layout).", show_default=False)]
SetOpt = Annotated[
    list[str] | None, typer.Option("--set", help="Override a config key, e.g. --set output_root=/data (repeatable).")
]
NumProcOpt = Annotated[
    int | None, typer.Option("--num-proc", min=1, help="Worker processes, 1 or more (default: the config's num_proc).")
]
DaskOpt = Annotated[
    str | None, typer.Option("--dask", help="Run units on Dask: scheduler address (tcp://host:port) or 'local'.")
]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show full tracebacks.")]
AppendOpt = Annotated[
    bool,
    typer.Option(
        "--append",
        help="Add new input files to the finished corpus: only they are tokenized, into new data files and shards; "
        "the finished ones stay as they are and keep their cells' splits. Removed or changed inputs are refused.",
    ),
]


class RichReporter:
    """Progress bar: units, cells, cells/s, ETA."""

    def __init__(self) -> None:
        self._progress: Progress | None = None
        self._task: Any = None
        self._cells = 0
        self._processed = 0
        self._t0 = 0.0

    def start(self, description: str, total_units: int, total_cells: int) -> None:
        """Open the bar for a stage of `total_units` units."""
        self._progress = Progress(
            TextColumn("{task.description}", style="bold", markup=False),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("units  {task.fields[cells]:,} cells  {task.fields[rate]:,.0f} cells/s"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self._progress.start()
        self._cells, self._processed, self._t0 = 0, 0, time.perf_counter()
        self._task = self._progress.add_task(description, total=total_units, cells=0, rate=0.0)

    def advance(self, units: int, cells: int, *, skipped: bool = False) -> None:
        """Count finished units; `skipped` units were done by an earlier run (not speed)."""
        self._cells += cells
        if skipped:  # done by an earlier run: shown as done, never as speed
            self._t0 = time.perf_counter()
        else:
            self._processed += cells
        rate = self._processed / max(time.perf_counter() - self._t0, 1e-9)
        assert self._progress is not None
        self._progress.update(self._task, advance=units, cells=self._cells, rate=rate)

    def stop(self) -> None:
        """Close the bar."""
        if self._progress:
            self._progress.stop()


_STORAGE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)


def _print_error(message: str, hint: str | None) -> None:
    # User text is escaped: rich would read `[torch]` in a pip hint as markup and drop it.
    console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    if hint:
        console.print(f"[yellow]hint:[/] {escape(hint)}", highlight=False, soft_wrap=True)


def _handle_errors(fn: Callable[..., None]) -> Callable[..., None]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        debug = kwargs.get("debug", False)
        setup_logging(logging.DEBUG if debug else logging.WARNING)
        try:
            with executor_session():  # one worker pool / Dask cluster for the whole command
                fn(*args, **kwargs)
        except CellcorpusError as exc:
            if debug:
                console.print_exception()
            _print_error(exc.message, exc.hint)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            _print_error(
                "interrupted: every finished unit is recorded and kept, and nothing half-written looks complete",
                "run the same command again to resume where it stopped",
            )
            raise typer.Exit(130) from None
        except OSError as exc:
            # Storage faults (full disk, read-only or forbidden folder) are the environment's, not a bug:
            # one line naming the file; anything else keeps its traceback.
            if exc.errno not in _STORAGE_ERRNOS:
                raise
            if debug:
                console.print_exception()
            where = f"{exc.filename}: " if exc.filename else ""
            _print_error(f"{where}{exc.strerror or exc}", "free space or choose another output folder, then rerun")
            raise typer.Exit(1) from None

    return wrapper


def _load(config: Path, overrides: list[str] | None) -> Config:
    return load_config(config, overrides or [])


def _print_summary(s: StageSummary) -> None:
    if s.skipped:
        out.print(f"[green]{escape(s.stage)}[/]: already complete, nothing to do")
    table = Table(title=escape(f"{s.stage} summary"), show_header=False, title_justify="left")
    for k, v in s.counts.items():
        table.add_row(escape(k.replace("_", " ")), f"{v:,}")
    for k, v in s.outputs.items():
        table.add_row(escape(k), escape(str(v)))
    if table.row_count:  # a stage that only has a note (e.g. fingerprints skipped) prints no empty table
        table.columns[1].overflow = "fold"
        out.print(table)
    for note in s.notes:
        out.print(f"[yellow]note:[/] {escape(note)}", highlight=False, soft_wrap=True)


@app.command()
@_handle_errors
def vocab(config: ConfigArg, set_: SetOpt = None, debug: DebugOpt = False) -> None:
    """Build the Ensembl-keyed vocabulary (vocab.json + id -> gene symbol map)."""
    from cellcorpus.stages.vocab import run_vocab

    _print_summary(run_vocab(_load(config, set_)))


@app.command()
@_handle_errors
def genes(config: ConfigArg, set_: SetOpt = None, debug: DebugOpt = False) -> None:
    """Dry run: how each input's gene ids match the vocabulary (directly, via gene_id_map, or not)."""
    from cellcorpus.stages.genes import run_genes

    rows = run_genes(_load(config, set_))
    table = Table(title="gene ids per input file", title_justify="left")
    for col in ("file", "genes", "direct", "via map", "ambiguous", "unmapped", "share an id", "coverage"):
        table.add_column(col, justify="left" if col == "file" else "right", overflow="fold")
    for r in rows:
        cov = f"{r.coverage:.1%}"
        table.add_row(
            escape(r.path),
            f"{r.n_genes:,}",
            f"{r.direct:,}",
            f"{r.via_map:,}" + (f" ({r.via_alias:,} by alias)" if r.via_alias else ""),
            f"{r.ambiguous:,}",
            f"{r.unmapped:,}",
            f"{r.colliding:,}",
            f"[red]{cov}[/]" if r.below_minimum else cov,
        )
    out.print(table)
    for r in rows:
        if r.examples_unmapped or r.examples_ambiguous:
            parts = []
            if r.examples_unmapped:
                parts.append("unmapped, most counted: " + ", ".join(r.examples_unmapped))
            if r.examples_ambiguous:
                parts.append("ambiguous, most counted: " + ", ".join(r.examples_ambiguous))
            out.print(f"{escape(r.path)}: {escape('; '.join(parts))}", highlight=False, soft_wrap=True)
    low = [r.path for r in rows if r.below_minimum]
    if low:
        out.print(
            f"[yellow]note:[/] {len(low)} file(s) below huggingface.min_gene_coverage: tokenize would stop on "
            f"{escape(low[0])}",
            highlight=False,
            soft_wrap=True,
        )


@app.command()
@_handle_errors
def drugs(config: ConfigArg, set_: SetOpt = None, debug: DebugOpt = False) -> None:
    """Drug ids + Morgan fingerprints (drug_to_id.json, drug_fps.npy) for the Tahoe-x1 chemistry token."""
    from cellcorpus.stages.drugs import run_drugs

    _print_summary(run_drugs(_load(config, set_)))


@app.command()
@_handle_errors
def download(
    source: Annotated[str, typer.Argument(help="cellxgene, scbasecamp or tahoe.", show_default=False)],
    config: ConfigArg,
    set_: SetOpt = None,
    num_proc: NumProcOpt = None,
    dask: DaskOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Download a source into its local folder (parallel, resumable, size-checked)."""
    from cellcorpus.stages.download import run_download

    plan = plan_for(_load(config, set_), "download", num_proc=num_proc, dask=dask, source=source)
    _print_summary(run_download(source, plan, reporter=RichReporter()))


@app.command()
@_handle_errors
def tokenize(
    config: ConfigArg,
    set_: SetOpt = None,
    num_proc: NumProcOpt = None,
    dask: DaskOpt = None,
    append: AppendOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Tokenize every input file into HF Arrow train/valid datasets (resumable)."""
    from cellcorpus.stages.tokenize import run_tokenize

    plan = plan_for(_load(config, set_), "tokenize", num_proc=num_proc, dask=dask, append=append)
    _print_summary(run_tokenize(plan, reporter=RichReporter()))


@app.command()
@_handle_errors
def stats(
    config: ConfigArg, set_: SetOpt = None, num_proc: NumProcOpt = None, dask: DaskOpt = None, debug: DebugOpt = False
) -> None:
    """Per-gene statistics of the inputs (Geneformer's gene medians, non-zero cells, totals; resumable)."""
    from cellcorpus.stages.stats import run_stats

    plan = plan_for(_load(config, set_), "stats", num_proc=num_proc, dask=dask)
    _print_summary(run_stats(plan, reporter=RichReporter()))


@app.command()
@_handle_errors
def mds(
    config: ConfigArg, set_: SetOpt = None, num_proc: NumProcOpt = None, dask: DaskOpt = None, debug: DebugOpt = False
) -> None:
    """Export the HF Arrow splits to MosaicML MDS shards with a merged index.json per split."""
    from cellcorpus.stages.mds import run_mds

    plan = plan_for(_load(config, set_), "mds", num_proc=num_proc, dask=dask)
    _print_summary(run_mds(plan, reporter=RichReporter()))


def _print_checks(report: Any) -> None:
    table = Table(title="verify", title_justify="left")
    for col in ("check", "checked", "failed", "first failure"):
        table.add_column(col, overflow="fold")
    for c in report.checks.values():
        status = "[green]0[/]" if not c.failed else f"[red]{c.failed:,}[/]"
        table.add_row(escape(c.name), f"{c.checked:,}", status, escape(c.first_failure or ""))
    out.print(table)


@app.command()
@_handle_errors
def verify(
    config: ConfigArg,
    set_: SetOpt = None,
    num_proc: NumProcOpt = None,
    dask: DaskOpt = None,
    all_hashes: Annotated[
        bool, typer.Option("--all-hashes", help="check every hash index.json lists (default: its fastest one)")
    ] = False,
    debug: DebugOpt = False,
) -> None:
    """Check every output (Arrow and MDS): hashes, counts, schema, token ids, CLS/pad, unique ids."""
    from cellcorpus.errors import VerifyError
    from cellcorpus.stages.verify import run_verify

    plan = plan_for(_load(config, set_), "verify", num_proc=num_proc, dask=dask)
    try:
        report = run_verify(plan, reporter=RichReporter(), all_hashes=all_hashes)
    except VerifyError as exc:
        _print_checks(exc.report)  # type: ignore[attr-defined]
        raise
    _print_checks(report)
    for note in report.notes:
        out.print(f"[yellow]note:[/] {escape(note)}", highlight=False, soft_wrap=True)
    out.print("[bold green]verify: all checks passed[/]")


@app.command()
@_handle_errors
def report(
    config: Annotated[
        list[Path],
        typer.Argument(help="YAML config(s): several give one page of them side by side.", show_default=False),
    ],
    set_: SetOpt = None,
    out_file: Annotated[
        Path, typer.Option("--out", help="The side-by-side page, when several configs are given.")
    ] = Path("corpora_report.html"),
    debug: DebugOpt = False,
) -> None:
    """Write stats.json and report.html (inline SVG plots) about each corpus (next to its datasets); with several
    configs, also one page of them side by side (--out)."""
    from cellcorpus.stages.report import comparison_page, read_stats, run_report

    configs = [_load(c, set_) for c in config]
    for cfg in configs:
        _print_summary(run_report(cfg))
    if len(configs) > 1:
        out_file.write_text(comparison_page([read_stats(cfg) for cfg in configs]))
        out.print(f"side by side: {escape(str(out_file))}", highlight=False, soft_wrap=True)


@app.command()
@_handle_errors
def run(
    config: ConfigArg,
    set_: SetOpt = None,
    num_proc: NumProcOpt = None,
    dask: DaskOpt = None,
    append: AppendOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Every stage the config has a section for, in order, each skipping completed work."""
    from cellcorpus.pipeline import iter_pipeline

    cfg = _load(config, set_)
    for summary in iter_pipeline(cfg, num_proc=num_proc, dask=dask, reporter=RichReporter(), append=append):
        _print_summary(summary)


@app.command()
@_handle_errors
def dedup(
    config: ConfigArg,
    against: Annotated[
        list[Path] | None,
        typer.Option(
            "--against", help="Another finished corpus' config (--set applies to it too): which cells it also holds."
        ),
    ] = None,
    set_: SetOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Duplicate cells (equal content fingerprints, recorded with `huggingface.fingerprints: true`) within the
    corpus and against other finished corpora; per pair of inputs, with an example. Writes report/dedup.json."""
    from cellcorpus.stages.dedup import run_dedup

    rep = run_dedup(_load(config, set_), [_load(c, set_) for c in against or []], names=[c.stem for c in against or []])
    out.print(
        f"{rep.cells:,} cells: {rep.duplicate_cells:,} duplicate cells in {rep.groups:,} groups of equal cells",
        highlight=False,
    )
    sections = [("within this corpus", rep.pairs)] + [
        (f"also in {name} ({found['cells_also_there']:,} cells)", found["pairs"]) for name, found in rep.against.items()
    ]
    for title, pairs in sections:
        table = Table(title=title, title_justify="left")
        for col in ("input", "other input", "cells", "example (input, row)"):
            table.add_column(col, overflow="fold", justify="right" if col == "cells" else "left")
        for p in pairs[:20]:
            (ia, ra), (ib, rb) = p["example"]
            table.add_row(escape(p["input"]), escape(p["other_input"]), f"{p['cells']:,}",
                          escape(f"{ia} row {ra} = {ib} row {rb}"))  # fmt: skip
        out.print(table)
    for what, rel in rep.id_lists.items():
        out.print(f"ids of the {escape(what)}: {escape(rel)} (under the corpus' merged_dataset_root; list it in "
                  "huggingface.drop_ids and rebuild to leave them out)", highlight=False, soft_wrap=True)  # fmt: skip


def _pairs(option: str, given: list[str] | None, kind: type) -> dict[str, Any]:
    """`NAME=VALUE` options as a dict; a malformed one is a ConfigError naming it."""
    from cellcorpus.errors import ConfigError

    pairs: dict[str, Any] = {}
    for item in given or []:
        name, sep, value = item.partition("=")
        try:
            if not sep or not name:
                raise ValueError
            pairs[name] = kind(value)
        except ValueError:
            raise ConfigError(f"{option} {item}: expected NAME={kind.__name__.upper()}") from None
    return pairs


@app.command()
@_handle_errors
def mix(
    config: Annotated[list[Path], typer.Argument(help="Configs of finished corpora (each named by its file's stem).")],
    proportion: Annotated[
        list[str] | None, typer.Option("--proportion", help="NAME=P: the source's share of an epoch (all or none).")
    ] = None,
    cap: Annotated[list[str] | None, typer.Option("--cap", help="NAME=N: at most N cells per epoch from it.")] = None,
    epoch_cells: Annotated[
        int | None, typer.Option("--epoch-cells", help="Cells per epoch with --proportion (default: all train cells).")
    ] = None,
    local_root: Annotated[
        str, typer.Option("--local-root", help="Cache folder of object-store corpora in the training job.")
    ] = "mds-data-folder",
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for streams.yaml and cells_per_epoch.tsv.")] = Path(
        "mix"
    ),
    debug: DebugOpt = False,
) -> None:
    """Write the `streams:` block of a training config mixing finished corpora, and the cells each source gives
    per epoch (counts from their manifests; mosaicml-streaming's `choose` per weighted source)."""
    from cellcorpus.stages.mix import mix_corpora, write_mix

    mixed = mix_corpora(
        list(config),
        proportions=_pairs("--proportion", proportion, float) or None,
        caps=_pairs("--cap", cap, int),
        epoch_cells=epoch_cells,
    )
    streams, table_file = write_mix(mixed, out_dir, local_root)
    _print_mix(mixed)
    out.print(f"streams: {escape(str(streams))}\ntable:   {escape(str(table_file))}", highlight=False, soft_wrap=True)


def _print_mix(mixed: Any) -> None:
    rows = mixed.table()
    table = Table(title="training mixture: cells per epoch", title_justify="left")
    columns = list(dict.fromkeys(k for r in rows for k in r))
    shown = {"train_cells": "train", "proportion": "asked", "cells_per_epoch": "per epoch",
             "epochs_of_source": "passes", "share_of_epoch": "share"}  # fmt: skip
    for col in columns:
        left = col == "source"
        table.add_column(shown.get(col, col.removesuffix("_cells")), justify="left" if left else "right", no_wrap=left)
    for r in rows:
        cells = [r.get(c) for c in columns]
        table.add_row(
            *("" if v is None else f"{v:,}" if isinstance(v, int) else f"{v:.3g}" if isinstance(v, float) else v
              for v in cells)
        )  # fmt: skip
    out.print(table)


@app.command()
@_handle_errors
def demo(
    directory: Annotated[Path, typer.Argument(help="Where to write the demo atlas and outputs.")] = Path("demo_out"),
    num_proc: NumProcOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Generate a small synthetic 3-source atlas and run the whole pipeline on it."""
    from cellcorpus.pipeline import demo_dedup, demo_mix, run_demo

    for name, summaries in run_demo(directory, num_proc=num_proc, reporter=RichReporter()):
        out.rule(f"[bold]dataset: {escape(name)}")
        for s in summaries:
            _print_summary(s)
    root = directory.resolve()
    mixed, streams = demo_mix(root)
    out.rule("[bold]training mixture (cellcorpus mix)")
    _print_mix(mixed)
    out.print(f"streams for a training config: {escape(str(streams))}", highlight=False, soft_wrap=True)
    found = demo_dedup(root)
    also = found.against["tahoe_100m_geneformer"]["cells_also_there"]
    out.rule("[bold]duplicate cells (cellcorpus dedup)")
    out.print(
        f"tahoe_100m: {found.cells:,} cells, {found.duplicate_cells:,} duplicates within; {also:,} of them are also "
        "in the Geneformer corpus of the same plates (found by content: another encoding and vocabulary)",
        highlight=False,
        soft_wrap=True,
    )
    out.print(f"[bold green]demo complete[/]: everything is under {escape(str(root))}")
    report = root / "tahoe_merged_w_metadata" / "report" / "report.html"
    out.print("\n[bold]Try next[/] (the last two need `pip install datasets` / `pip install mosaicml-streaming`;"
              " a training batch: docs/training.md):", highlight=False, soft_wrap=True)  # fmt: skip
    out.print(f"  open the report:   {escape(report.as_uri())}", highlight=False, soft_wrap=True)
    train = root / "tahoe_merged_w_metadata" / "train.dataset"
    load = f"import datasets; print(datasets.load_from_disk('{escape(str(train))}'))"
    out.print(
        f'  load the Arrow split:  python -c "{load}"',
        highlight=False,
        soft_wrap=True,
    )
    mds = root / "tahoe_merged_MDS_v2" / "train"
    out.print(
        '  read the MDS shards:   python -c "from streaming import StreamingDataset; '
        f"d = StreamingDataset(local='{escape(str(mds))}', allow_unsafe_types=True); "
        "print(len(d), d[0]['genes'][:5])\"",
        highlight=False,
        soft_wrap=True,
    )


config_app = typer.Typer(no_args_is_help=True, help="The configs shipped with cellcorpus: list, print, copy.")
app.add_typer(config_app, name="config")


@config_app.command("list")
@_handle_errors
def config_list(debug: DebugOpt = False) -> None:
    """List the shipped configs (names for `config show` / `config init`)."""
    from cellcorpus.pipeline import shipped_configs

    for name in shipped_configs():
        out.print(escape(name), highlight=False)


def _shipped(name: str) -> Path:
    from cellcorpus.config import shipped_config
    from cellcorpus.errors import ConfigError
    from cellcorpus.pipeline import shipped_configs

    found = shipped_config(name)
    if found is None:
        raise ConfigError(f"no single shipped config named '{name}'", hint=f"one of: {', '.join(shipped_configs())}")
    return found


@config_app.command("show")
@_handle_errors
def config_show(
    name: Annotated[str, typer.Argument(help="A name from `config list` (the .yaml may be left out).")],
    debug: DebugOpt = False,
) -> None:
    """Print a shipped config."""
    out.print(escape(_shipped(name).read_text()), highlight=False, soft_wrap=True)


@config_app.command("init")
@_handle_errors
def config_init(
    name: Annotated[str, typer.Argument(help="A name from `config list`.")],
    directory: Annotated[Path, typer.Argument(help="Folder to copy it into (created).")] = Path("."),
    debug: DebugOpt = False,
) -> None:
    """Copy a shipped config into a folder to edit (an existing file is never overwritten)."""
    from cellcorpus.errors import ConfigError

    src = _shipped(name)
    target = directory / src.name
    if target.exists():
        raise ConfigError(f"{target} already exists; it is left untouched", hint="choose another folder")
    directory.mkdir(parents=True, exist_ok=True)
    target.write_text(src.read_text())
    out.print(f"wrote {escape(str(target))}", highlight=False)


@app.command("id")
@_handle_errors
def decode_id(
    config: ConfigArg,
    cell_id: Annotated[list[int], typer.Argument(help="One or more `id` values from the datasets.")],
    set_: SetOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Decode cell ids back to (input file, row): ids are (file_index << 32) | row_in_file."""
    from cellcorpus.api import decode_id as _decode

    cfg = _load(config, set_)
    for value in cell_id:
        path, row = _decode(cfg, value)
        out.print(f"{value}\t{escape(path)}\trow {row}", highlight=False, soft_wrap=True)


@app.callback(invoke_without_command=True)
def _main(version: Annotated[bool, typer.Option("--version", help="Print the version.")] = False) -> None:
    if version:
        out.print(__version__)
        raise typer.Exit()


def main() -> None:
    """Console entry point (`cellcorpus`)."""
    app()
