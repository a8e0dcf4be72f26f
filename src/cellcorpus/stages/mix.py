"""Training mixtures of finished corpora (`cellcorpus mix`): the `streams:` block a Tahoe-x1 training config reads.

mosaicml-streaming weighs streams either relatively (`proportion` on every stream, the epoch's size set
elsewhere) or absolutely (`repeat` / `choose` per stream). The mixture is written the absolute way: every
weighted stream gets `choose`, the number of its cells drawn per epoch, computed here from the finished
manifests' cell counts, so the table of cells per source per epoch this command prints is exactly what a
`StreamingDataset` draws (a `proportion` block would leave the epoch's size, and so the counts, to the loader).

- no `proportions`: every source whole (its own size), or at most `caps[name]` cells per epoch;
- `proportions`: every source's share of the epoch; the epoch holds `epoch_cells` cells (default: all train
  cells of all sources), made smaller until no source draws more than its cap, so the shares hold exactly.
A share larger than a source's size repeats its cells (`choose` above the stream's size, as streaming defines).
Only the training split is weighted; the other splits are listed whole.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cellcorpus.config import Config, load_config
from cellcorpus.errors import ConfigError
from cellcorpus.io.atomic import atomic_path
from cellcorpus.io.paths import is_url
from cellcorpus.layout import Layout
from cellcorpus.manifest import MdsManifest, file_checksum, read_manifest

__all__ = ["Mix", "MixSource", "mix_corpora", "write_mix", "TRAIN_SPLIT", "STREAMS_FILE", "TABLE_FILE"]

TRAIN_SPLIT = "train"  # the split the mixture weighs; the others are listed whole
STREAMS_FILE = "streams.yaml"
TABLE_FILE = "cells_per_epoch.tsv"


@dataclass(frozen=True)
class MixSource:
    """One finished corpus: its name in the mixture, where its MDS splits are, and their cell counts."""

    name: str
    config: str
    out_root: str
    cells: dict[str, int]
    tokens: tuple[str, str]  # (encoding, xxh64 of the vocabulary): sources must agree on what a token id means


@dataclass
class Mix:
    """Sources and the cells each contributes to one training epoch (`None`: all of its cells, once)."""

    sources: list[MixSource]
    choose: dict[str, int | None]
    proportions: dict[str, float] = field(default_factory=dict)  # normalised; empty = by size

    def per_epoch(self, name: str) -> int:
        """Training cells drawn from source `name` per epoch."""
        src = self._source(name)
        chosen = self.choose[name]
        return src.cells[TRAIN_SPLIT] if chosen is None else chosen

    def _source(self, name: str) -> MixSource:
        return next(s for s in self.sources if s.name == name)

    def streams(self, local_root: str = "mds-data-folder") -> dict[str, Any]:
        """The `train_loader` / `valid_loader` blocks: per split and source, `remote` (an object-store corpus) and
        `local` (its cache folder under `local_root`; a local corpus is read in place), and `choose` where the
        mixture weighs the source."""
        blocks: dict[str, Any] = {}
        splits = [TRAIN_SPLIT] + sorted({s for src in self.sources for s in src.cells} - {TRAIN_SPLIT})
        for split in splits:
            streams: dict[str, Any] = {}
            for src in self.sources:
                if split not in src.cells:
                    continue
                root = src.out_root.rstrip("/")
                stream: dict[str, Any] = (
                    {"remote": f"{root}/{split}", "local": f"{local_root}/{src.name}/{split}"}
                    if is_url(root)
                    else {"local": str(Path(root).resolve() / split)}
                )
                if split == TRAIN_SPLIT and self.choose[src.name] is not None:
                    stream["choose"] = self.choose[src.name]
                streams[src.name] = stream
            loader = "train_loader" if split == TRAIN_SPLIT else f"{split}_loader"
            blocks[loader] = {"dataset": {"streams": streams}}
        return blocks

    def table(self) -> list[dict[str, Any]]:
        """Per source: cells in the training split, the requested share, cells drawn per epoch, times a cell is
        seen per epoch on average, the share of the epoch it makes, and the other splits' cells."""
        total = sum(self.per_epoch(s.name) for s in self.sources)
        rows = []
        for src in self.sources:
            n, drawn = src.cells[TRAIN_SPLIT], self.per_epoch(src.name)
            rows.append(
                {
                    "source": src.name,
                    "train_cells": n,
                    "proportion": round(self.proportions[src.name], 6) if self.proportions else None,
                    "cells_per_epoch": drawn,
                    "epochs_of_source": round(drawn / n, 4) if n else 0.0,
                    "share_of_epoch": round(drawn / total, 6) if total else 0.0,
                    **{f"{split}_cells": c for split, c in sorted(src.cells.items()) if split != TRAIN_SPLIT},
                }
            )
        return rows


def _source(cfg: Config, name: str, where: str) -> MixSource:
    if cfg.mds is None:
        raise ConfigError(f"{where}: has no mds section; a mixture is made of MDS corpora")
    layout = Layout.of(cfg)
    assert layout.mds is not None
    manifest = read_manifest(layout.mds, "manifest.json", MdsManifest)
    if manifest is None:
        raise ConfigError(
            f"{where}: no finished MDS export in {cfg.mds.out_root}", hint=f"run `cellcorpus run {where}` first"
        )
    cells = {split: rec.samples for split, rec in manifest.splits.items()}
    if TRAIN_SPLIT not in cells:
        raise ConfigError(f"{where}: its MDS export has no '{TRAIN_SPLIT}' split (it has {sorted(cells)})")
    hf = cfg.need("huggingface")
    tokens = (hf.encoding, file_checksum(hf.vocab_file))
    return MixSource(name, where, cfg.mds.out_root, cells, tokens)


def _shares(names: list[str], proportions: dict[str, float]) -> dict[str, float]:
    missing = [n for n in names if n not in proportions]
    if missing:
        raise ConfigError(
            f"--proportion: no proportion for {', '.join(missing)}",
            hint="give every source a proportion, or none (sources weighted by their size)",
        )
    bad = {n: p for n, p in proportions.items() if not p > 0}
    if bad:
        raise ConfigError(f"--proportion: proportions must be above 0, got {bad}")
    total = sum(proportions.values())
    return {n: proportions[n] / total for n in names}


def _check_names(what: str, given: dict[str, Any], names: list[str]) -> None:
    unknown = sorted(set(given) - set(names))
    if unknown:
        raise ConfigError(f"{what}: unknown source {', '.join(unknown)}", hint=f"the sources are {', '.join(names)}")


def mix_corpora(
    configs: list[str | Path | Config],
    *,
    names: list[str] | None = None,
    proportions: dict[str, float] | None = None,
    caps: dict[str, int] | None = None,
    epoch_cells: int | None = None,
) -> Mix:
    """The mixture of the finished corpora `configs` (paths or loaded configs; each named by its file's stem
    unless `names` are given). See the module text for `proportions`, `caps` and `epoch_cells`."""
    if not configs:
        raise ConfigError("mix: give at least one finished corpus' config")
    sources: list[MixSource] = []
    for k, c in enumerate(configs):
        where = str(c) if not isinstance(c, Config) else f"config {k + 1}"
        name = names[k] if names else (Path(c).stem if not isinstance(c, Config) else f"source{k + 1}")
        sources.append(_source(c if isinstance(c, Config) else load_config(c), name, where))
    seen: dict[str, str] = {}
    roots: dict[str, str] = {}
    for s in sources:
        if s.name in seen:
            raise ConfigError(f"mix: two sources are named '{s.name}' ({seen[s.name]}, {s.config})", hint="rename one")
        seen[s.name] = s.config
        root = s.out_root.rstrip("/") if is_url(s.out_root) else str(Path(s.out_root).resolve())
        if root in roots:  # one corpus twice: its cells would be drawn twice as often as asked
            raise ConfigError(f"mix: {roots[root]} and {s.name} are the same corpus ({s.out_root})")
        roots[root] = s.name
    first = sources[0]
    for s in sources[1:]:
        if s.tokens != first.tokens:
            raise ConfigError(
                f"mix: {s.name} and {first.name} use different encodings or vocabularies "
                f"({s.tokens[0]}, vocabulary xxh64 {s.tokens[1]} against {first.tokens[0]}, {first.tokens[1]}): "
                "the same token id would mean different genes",
                hint="tokenize every source with the same vocabulary file and encoding",
            )
    names_ = [s.name for s in sources]
    caps = dict(caps or {})
    _check_names("--cap", caps, names_)
    if any(c < 1 for c in caps.values()):
        raise ConfigError(f"--cap: caps must be 1 or more cells, got {caps}")
    train = {s.name: s.cells[TRAIN_SPLIT] for s in sources}
    if not proportions:
        if epoch_cells is not None:
            raise ConfigError("--epoch-cells: needs --proportion (without it each source is drawn at its own size)")
        choose = {n: (min(train[n], caps[n]) if n in caps else None) for n in names_}
        return Mix(sources, choose)
    _check_names("--proportion", proportions, names_)
    shares = _shares(names_, proportions)
    epoch = float(epoch_cells if epoch_cells is not None else sum(train.values()))
    if epoch < 1:
        raise ConfigError(f"--epoch-cells: must be 1 or more, got {epoch_cells}")
    epoch = min([epoch] + [caps[n] / shares[n] for n in caps])  # the largest epoch within every cap
    choose = {n: min(round(epoch * shares[n]), caps.get(n, 1 << 62)) for n in names_}
    empty = [n for n, c in choose.items() if c < 1]
    if empty:
        raise ConfigError(
            f"mix: {', '.join(empty)} would give no cell per epoch (an epoch of {epoch:,.0f} cells)",
            hint="raise its proportion or --epoch-cells, or leave it out",
        )
    return Mix(sources, dict(choose), shares)


def write_mix(mix: Mix, out_dir: str | Path, local_root: str = "mds-data-folder") -> tuple[Path, Path]:
    """`streams.yaml` (the loader blocks, to paste into a training config) and `cells_per_epoch.tsv` in
    `out_dir`, each written whole or not at all. Returns their paths."""
    out = Path(out_dir)
    streams, table = out / STREAMS_FILE, out / TABLE_FILE
    header = (
        "# Written by `cellcorpus mix`: the streams of a training config (Tahoe-x1's train.py, or any\n"
        "# mosaicml-streaming StreamingDataset). `choose` = cells drawn from that source per epoch.\n"
    )
    for src in mix.sources:
        header += f"#   {src.name}: {src.config}\n"
    with atomic_path(streams) as tmp:
        tmp.write_text(header + yaml.safe_dump(mix.streams(local_root), sort_keys=False))
    rows = mix.table()
    buf = io.StringIO()
    columns = list(dict.fromkeys(k for r in rows for k in r))  # a split only some sources have gets a column too
    writer = csv.DictWriter(buf, fieldnames=columns, delimiter="\t", lineterminator="\n", restval="")
    writer.writeheader()
    writer.writerows({k: ("" if v is None else v) for k, v in r.items()} for r in rows)
    with atomic_path(table) as tmp:
        tmp.write_text(buf.getvalue())
    return streams, table
