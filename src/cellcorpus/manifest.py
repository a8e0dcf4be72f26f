"""Per-unit completion records and the stage manifest.

A unit is recorded only after its output was renamed into place (datatrove's completion markers),
so a rerun skips exactly the finished units. `manifest.json` is written by finalize, last.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import xxhash

from cellcorpus._version import __version__
from cellcorpus.errors import ConfigError
from cellcorpus.io.atomic import write_json_atomic

__all__ = [
    "UnitResult",
    "Ledger",
    "file_checksum",
    "quick_checksum",
    "output_record",
    "write_manifest",
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
    """xxh64 of a whole file (outputs are checksummed in full)."""
    h = xxhash.xxh64()
    with open(path, "rb") as f:
        while chunk := f.read(_BLOCK):
            h.update(chunk)
    return h.hexdigest()


_EDGE = 1 << 16


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


def output_record(path: str | Path, root: str | Path, **extra: Any) -> dict[str, Any]:
    """Path (relative to `root`), size and xxh64 of a finished output file, plus `extra`."""
    p = Path(path)
    return {"path": str(p.relative_to(root)), "bytes": p.stat().st_size, "xxh64": file_checksum(p), **extra}


class Ledger:
    """Completion records of one stage under `<dir>/<unit_id>.json`, tied to a config hash."""

    def __init__(self, directory: str | Path, config_hash: str, derived: bool = False) -> None:
        """`derived=True`: records of another hash are stale derived work and are dropped, not refused."""
        self.dir = Path(directory)
        self.config_hash = config_hash
        self.derived = derived

    def done(self) -> dict[str, UnitResult]:
        """Recorded units by id; records of other settings raise (or are dropped when derived)."""
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

    def record(self, result: UnitResult) -> None:
        """Write a unit's completion record (after its output is in place)."""
        write_json_atomic(self.dir / f"{result.unit_id}.json", {**asdict(result), "config_hash": self.config_hash})


def write_manifest(path: str | Path, *, stage: str, config_hash: str, **body: Any) -> None:
    """Write a stage manifest (atomically, last) with the tool version and config hash."""
    write_json_atomic(path, {"stage": stage, "tool_version": __version__, "config_hash": config_hash, **body})
