"""Write-then-rename: a file either exists complete or not at all (resume never trusts a partial file)."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["atomic_path", "write_json_atomic", "remove_temporaries", "TEMP_INFIX"]

TEMP_INFIX = ".tmp-"  # `.<final name>.tmp-<8 hex>`: the temporaries atomic_path writes


@contextmanager
def atomic_path(final: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling path; rename it to `final` only if the block succeeds."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}{TEMP_INFIX}{uuid.uuid4().hex[:8]}")
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()


def remove_temporaries(folder: str | Path, name: str) -> int:
    """Remove the temporaries `atomic_path` left for files named `name` (a glob) in `folder`, e.g. after a
    kill -9: the file it was writing is ours by name, so is its temporary. Returns how many went."""
    n = 0
    for tmp in Path(folder).glob(f".{name}{TEMP_INFIX}*"):
        if tmp.is_file():
            tmp.unlink()
            n += 1
    return n


def write_json_atomic(path: str | Path, obj: Any, sort_keys: bool = True) -> None:
    """Write JSON (indented by 2) via a temporary sibling and rename: complete or absent, never partial."""
    with atomic_path(path) as tmp:
        tmp.write_text(_indented(obj, sort_keys) + "\n")


def _indented(obj: Any, sort_keys: bool) -> str:
    """`json.dumps(obj, indent=2, sort_keys=...)`, byte for byte. A flat mapping of scalars (a 62k-gene
    vocabulary) goes through the C encoder, which `indent` turns off (0.12 s -> 0.02 s): its separators put
    each item on its own indented line, and only the braces need their line breaks added."""
    scalars = (str, int, float, bool, type(None))
    if isinstance(obj, dict) and obj and all(isinstance(v, scalars) for v in obj.values()):
        flat = json.dumps(obj, sort_keys=sort_keys, separators=(",\n  ", ": "))
        return "{\n  " + flat[1:-1] + "\n}"
    return json.dumps(obj, indent=2, sort_keys=sort_keys)
