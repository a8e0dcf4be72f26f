"""Per-unit completion records and the stage manifest.

A unit is recorded only after its output was renamed into place (datatrove's completion markers),
so a rerun skips exactly the finished units. `manifest.json` is written by finalize, last.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import xxhash
from pydantic import BaseModel, ConfigDict, ValidationError

from cellcorpus._version import __version__
from cellcorpus.errors import ConfigError, InputError
from cellcorpus.io.atomic import write_json_atomic
from cellcorpus.io.paths import Publisher, filesystem, is_url

__all__ = [
    "UnitResult",
    "Ledger",
    "file_checksum",
    "quick_checksum",
    "mapping_checksum",
    "output_record",
    "write_manifest",
    "DownloadManifest",
    "StatsManifest",
    "parse_manifest",
    "read_manifest",
    "StageManifest",
    "TokenizeManifest",
    "MdsManifest",
    "DrugsManifest",
    "InputRecord",
    "DataFileRecord",
    "MdsSplitRecord",
    "MANIFEST_VERSION",
]

log = logging.getLogger(__name__)

_BLOCK = 1 << 22


@dataclass
class UnitResult:
    """What a unit did: counts (cells in/out per filter), outputs with checksums, free-form extra."""

    unit_id: str
    counts: dict[str, int] = field(default_factory=dict)
    outputs: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, d: dict) -> UnitResult:
        """Rebuild a result from its completion record."""
        return cls(d["unit_id"], d.get("counts", {}), d.get("outputs", []), d.get("extra", {}))


def file_checksum(path: str | Path) -> str:
    """xxh64 of a whole file, a local path or an fsspec URL (outputs are checksummed in full)."""
    h = xxhash.xxh64()
    if is_url(str(path)):
        fs, stripped = filesystem(str(path))
        opened = fs.open(stripped, "rb")
    else:
        opened = open(path, "rb")  # noqa: SIM115 - closed by the with below
    with opened as f:
        while chunk := f.read(_BLOCK):
            h.update(chunk)
    return h.hexdigest()


_EDGE = 1 << 16


def mapping_checksum(mapping: dict[str, Any]) -> str:
    """xxh64 of a mapping's (key, value) pairs in order: swapping two values changes it, whitespace does not."""
    return xxhash.xxh64(json.dumps(list(mapping.items())).encode()).hexdigest()


def quick_checksum(path: str | Path) -> str:
    """xxh64 of size + first and last 64 KiB (HDF5 superblock and trailing metadata): detects a changed
    input at plan time without reading it — every rerun plans, over tens of thousands of files.
    """
    p = Path(path)
    size = p.stat().st_size
    h = xxhash.xxh64(str(size).encode())
    with open(p, "rb") as f:
        h.update(f.read(_EDGE))
        if size > _EDGE:
            f.seek(max(size - _EDGE, _EDGE))
            h.update(f.read(_EDGE))
    return h.hexdigest()


def output_record(path: str | Path, root: str | Path, xxh64: str | None = None, **extra: Any) -> dict[str, Any]:
    """Path (relative to `root`), size and xxh64 of a finished output file, plus `extra`.

    `xxh64` when the writer hashed the bytes on their way out (else the file is read to hash it).
    """
    p = Path(path)
    digest = xxh64 or file_checksum(p)
    return {"path": str(p.relative_to(root)), "bytes": p.stat().st_size, "xxh64": digest, **extra}


class Ledger:
    """Completion records of one stage under `<dir>/<unit_id>.json`, tied to a config hash."""

    def __init__(self, directory: str | Path, config_hash: str, derived: bool = False) -> None:
        """`derived=True`: records of another hash are stale derived work and are dropped, not refused."""
        self.dir = Path(directory)
        self.config_hash = config_hash
        self.derived = derived
        self._read: dict[str, UnitResult] | None = None  # read once per instance, kept up to date by record()

    def done(self) -> dict[str, UnitResult]:
        """Recorded units by id; records of other settings raise (or are dropped when derived).

        The folder is read once per Ledger (a stage decides, then runs: 10^4 records are not read twice);
        records written through this instance are added, a new instance reads the folder again.
        """
        if self._read is None:
            self._read = self._scan()
        return dict(self._read)

    def _scan(self) -> dict[str, UnitResult]:
        out: dict[str, UnitResult] = {}
        if not self.dir.is_dir():
            return out
        for p in sorted(self.dir.glob("*.json")):
            try:
                rec = json.loads(p.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError):
                # Records are written atomically, so a damaged one was damaged from outside: the unit
                # is simply redone (its output is rewritten by name), never trusted.
                log.warning("%s: damaged completion record, the unit will be redone", p)
                p.unlink()
                continue
            if rec.get("config_hash") != self.config_hash and self.derived:
                p.unlink()
                continue
            if rec.get("config_hash") != self.config_hash:
                raise ConfigError(
                    f"{self.dir}: holds work from a different config or other inputs "
                    f"(hash {rec.get('config_hash')} != {self.config_hash})",
                    hint="use a new output folder, or delete the old outputs to start over",
                )
            out[rec["unit_id"]] = UnitResult.from_json(rec)
        return out

    def forget(self, unit_id: str) -> None:
        """Drop a unit's completion record (its output was removed: the unit is redone if it is planned again)."""
        (self.dir / f"{unit_id}.json").unlink(missing_ok=True)
        if self._read is not None:
            self._read.pop(unit_id, None)

    def record(self, result: UnitResult) -> None:
        """Write a unit's completion record (after its output is in place)."""
        write_json_atomic(self.dir / f"{result.unit_id}.json", {**asdict(result), "config_hash": self.config_hash})
        if self._read is not None:
            self._read[result.unit_id] = result


MANIFEST_VERSION = 1


class _Record(BaseModel):
    # extra="allow": a record may carry more (unit counts, per-split extras) than readers need
    model_config = ConfigDict(extra="allow")


class StageManifest(_Record):
    """What every stage manifest holds: which stage, which tool, and the identity of the work."""

    stage: str
    tool_version: str
    manifest_version: int = MANIFEST_VERSION
    config_hash: str
    settings_hash: str | None = None
    # what settings_hash was made of (and `source`: where the stage's input was), for naming what differs
    settings: dict[str, Any] | None = None


class InputRecord(_Record):
    """One tokenize input: its position (`file_index`, the high half of every id), path, size, fingerprint."""

    file_index: int
    path: str
    bytes: int
    checksum: str
    n_obs: int


class DataFileRecord(_Record):
    """One Arrow data file of a split: relative path, size, xxh64, cells."""

    path: str
    bytes: int
    xxh64: str
    n_cells: int


class ExportRecord(_Record):
    """One file of a model's own layout written beside the datasets (scBank's folder, Geneformer's lengths)."""

    path: str  # relative to the merged dataset root
    bytes: int
    xxh64: str


class TokenizeManifest(StageManifest):
    """`<merged_dataset_root>/manifest.json`."""

    dataset_name: str | None = None
    metadata_columns: list[str]
    inputs: list[InputRecord]
    units: list[dict[str, Any]]
    splits: dict[str, list[DataFileRecord]]
    totals: dict[str, int]
    held_out_groups: dict[str, int] | None = None  # `split_parameters.by`: valid's groups -> cells written
    # inputs holding non-integer counts (normalised data where raw counts are expected) -> values, if any
    non_integer_values: dict[str, int] | None = None
    # per split, the files of the model's own layout written beside the datasets (the encoding's `export`)
    exports: dict[str, list[ExportRecord]] | None = None
    # `huggingface.fingerprints`: one file of kept cells' content fingerprints per unit (for `cellcorpus dedup`)
    fingerprints: list[ExportRecord] | None = None
    # `--append`: each append to the first build, in order (its generation, input files and cells)
    appends: list[dict[str, Any]] | None = None
    # `dedup: {policy: drop}`: the duplicate cells this build left out (cells, groups, pairs of inputs + example)
    duplicates_dropped: dict[str, Any] | None = None


class MdsSplitRecord(_Record):
    """One MDS split: samples written, cells read from Arrow, drops, shard entries."""

    samples: int
    cells_in: int
    dropped_min_length: int
    shards: list[dict[str, Any]]


class MdsManifest(StageManifest):
    """`<mds.out_root>/manifest.json`."""

    source_manifest: str
    columns: dict[str, str]
    splits: dict[str, MdsSplitRecord]
    totals: dict[str, int]


class StatsManifest(StageManifest):
    """`<stats.output_root>/manifest.json`."""

    inputs: list[InputRecord]
    totals: dict[str, int]
    files: dict[str, str]  # output name -> xxh64 of its bytes


class DrugsManifest(StageManifest):
    """`<drugs.output_root>/drugs_manifest.json`."""

    table: str
    table_xxh64: str
    rdkit_version: str
    radius: int
    n_bits: int
    counts: dict[str, int]
    rows_xxh64: list[str]
    drug_to_id_xxh64: str | None = None  # of the name -> id pairs in order (None: written by an earlier version)


M = TypeVar("M", bound=StageManifest)


def read_manifest(pub: Publisher, rel: str, model: type[M]) -> M | None:
    """A typed manifest under a (maybe remote) output root; None when absent, an InputError when damaged or
    unknown. Lives here, not on Publisher: storage knows no record schema."""
    data = pub.read_json(rel)
    return None if data is None else parse_manifest(data, model, pub.url(rel))


def parse_manifest(data: Any, model: type[M], where: str) -> M:
    """Validate a manifest read from `where`; a damaged or newer-than-known one is an InputError naming it."""
    version = data.get("manifest_version", MANIFEST_VERSION) if isinstance(data, dict) else None
    if isinstance(version, int) and version > MANIFEST_VERSION:
        raise InputError(
            f"{where}: written by a newer cellcorpus (manifest version {version}, this one reads {MANIFEST_VERSION})",
            hint="upgrade cellcorpus",
        )
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise InputError(
            f"{where}: damaged manifest ({field}: {first['msg']})", hint="restore it, or delete the output to rebuild"
        ) from exc


class DownloadManifest(StageManifest):
    """`<source output_root>/download_manifest.json` (fields by source: a URL and files, or Census chunks)."""


def write_manifest(
    path: str | Path, model: type[StageManifest], *, stage: str, config_hash: str, **body: Any
) -> StageManifest:
    """Write a stage manifest (atomically, last) with the tool version and config hash, validated as `model`
    first: what is written is what readers will parse (a missing or mistyped field fails here, in the writer,
    not later in a reader). Written with exactly the keys given (no defaults added)."""
    record = {
        "stage": stage,
        "tool_version": __version__,
        "manifest_version": MANIFEST_VERSION,
        "config_hash": config_hash,
        **body,
    }
    typed = model.model_validate(record)
    write_json_atomic(path, typed.model_dump(mode="json", exclude_unset=True))
    return typed
