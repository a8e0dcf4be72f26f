"""Folders cellcorpus may write into and clean: only those it created, or found empty, and marked as its own.

A scratch or output folder named by the config may already exist and hold a user's files (`output_root=~/proj`
makes `~/proj/parts` a scratch folder). Before the first write a folder is *claimed*: created with an owner
mark, or adopted when empty or when it holds cellcorpus' own records (an export of an earlier version); a
folder holding anything else is refused with its name. Cleanups go through `remove_owned`, which deletes a
folder only when it carries the mark, so a user's folder is never cleaned whatever the config says.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from cellcorpus.errors import ConfigError
from cellcorpus.io.lock import LOCK_NAME

__all__ = ["OWNER_MARK", "check_claimable", "claim_dir", "remove_owned", "is_owned"]

OWNER_MARK = ".cellcorpus-owned"
WRITE_PROBE = ".cellcorpus-write-test-"  # preflight's writability probe (created and removed at once)


def is_owned(path: Path) -> bool:
    """Whether `path` is a folder cellcorpus created (or adopted) and marked."""
    return (path / OWNER_MARK).is_file()


def _foreign(path: Path, records: tuple[str, ...]) -> list[str]:
    """Entries that make `path` someone else's folder (empty when it may be claimed)."""
    if not path.exists() or is_owned(path):
        return []
    if not path.is_dir():
        return [path.name]
    entries = sorted(p.name for p in path.iterdir() if p.name not in (OWNER_MARK, LOCK_NAME)
                     and not p.name.startswith(WRITE_PROBE))  # fmt: skip
    if not entries or any(r in entries for r in records):
        return []
    return entries


def check_claimable(path: str | Path, key: str, records: tuple[str, ...] = ()) -> None:
    """Raise a ConfigError naming `key` and the folder when `path` holds files cellcorpus did not write.

    `records`: names whose presence shows an earlier cellcorpus run made the folder (its manifest, ledger).
    Nothing is written (preflight calls this).
    """
    foreign = _foreign(Path(path), records)
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise ConfigError(
            f"{key}: {path} already holds files cellcorpus did not write ({shown}); it is left untouched",
            hint="move those files, or point the key at a new or empty folder",
        )


def claim_dir(path: str | Path, key: str, records: tuple[str, ...] = ()) -> Path:
    """Create or adopt `path` as cellcorpus' own folder (refused as in `check_claimable`); returns it."""
    path = Path(path)
    check_claimable(path, key, records)
    path.mkdir(parents=True, exist_ok=True)
    mark = path / OWNER_MARK
    if not mark.is_file():
        mark.write_bytes(b"")
    return path


def remove_owned(path: str | Path) -> bool:
    """Delete `path` if cellcorpus marked it as its own; anything else is left alone. True if removed."""
    path = Path(path)
    if not is_owned(path):
        return False
    shutil.rmtree(path)
    return True
