"""Paths that may be local folders or fsspec URLs (s3://, gs://, memory://, file://)."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import fsspec

from cellcorpus.errors import InputError

__all__ = ["is_url", "same_location", "join", "filesystem", "exists", "Publisher", "local_copy"]


def is_url(path: str) -> bool:
    """Whether `path` is an fsspec URL rather than a local path."""
    return "://" in path


def same_location(a: str, b: str) -> bool:
    """Whether two spellings name the same folder (relative vs absolute, trailing slash)."""
    if is_url(a) or is_url(b):
        return a.rstrip("/") == b.rstrip("/")
    return Path(a).resolve() == Path(b).resolve()


def join(root: str, name: str) -> str:
    """Join `name` onto `root`; an absolute path or URL `name` wins (seed configs mix both)."""
    if is_url(name) or Path(name).is_absolute():
        return name
    if is_url(root):
        return f"{root.rstrip('/')}/{name}"
    return str(Path(root) / name)


def filesystem(path: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """Fsspec filesystem + stripped path for a local path or URL."""
    fs, _, paths = fsspec.get_fs_token_paths(path)
    return fs, paths[0]


def exists(path: str) -> bool:
    """Whether a local path or URL exists."""
    if not is_url(path):
        return Path(path).exists()
    fs, p = filesystem(path)
    return fs.exists(p)


class Publisher:
    """An output root that may be remote: stages write under `local_dir`, then `publish` each finished file.

    For a local root `local_dir` is the root itself and publishing does nothing. For a URL root,
    files are staged in a local folder and uploaded one by one when complete (then removed locally, so
    staging holds about one unit of data); marker files (state.json, index.json, manifest.json) are
    published last by the stages, so a remote split becomes visible only when it is whole.
    """

    def __init__(self, root: str, staging: str | Path) -> None:
        self.root = root
        self.remote = is_url(root)
        self.local_dir = Path(staging) if self.remote else Path(root)

    def url(self, rel: str) -> str:
        """Full location (path or URL) of `rel` under the root."""
        return join(self.root, rel)

    def publish(self, local_file: str | Path) -> None:
        """Upload a finished local file to a URL root (no-op for a local root)."""
        if not self.remote:
            return
        local_file = Path(local_file)
        rel = local_file.relative_to(self.local_dir).as_posix()
        fs, path = filesystem(self.url(rel))
        fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        fs.put_file(str(local_file), path)
        local_file.unlink()

    def exists(self, rel: str) -> bool:
        """Whether `rel` exists under the root."""
        return exists(self.url(rel))

    def remove(self, rel: str) -> None:
        """Remove `rel` under the root if present."""
        fs, path = filesystem(self.url(rel))
        if fs.exists(path):
            fs.rm(path)

    def read_json(self, rel: str) -> Any:
        """The parsed JSON file, None when absent; a damaged (truncated, edited) file is an InputError."""
        fs, path = filesystem(self.url(rel))
        if not fs.exists(path):
            return None
        with fs.open(path, "rb") as f:
            raw = f.read()
        try:
            return json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InputError(
                f"{self.url(rel)}: damaged file, not valid JSON ({exc})",
                hint="it was truncated or edited; restore it, or delete this output folder to rebuild it",
            ) from exc


@contextmanager
def local_copy(path: str) -> Iterator[Path]:
    """A local path for `path`; a URL is downloaded to a temporary file for the duration (bounded: one file)."""
    if not is_url(path):
        yield Path(path)
        return
    fs, p = filesystem(path)
    with tempfile.TemporaryDirectory(prefix="cellcorpus-") as d:
        target = Path(d) / Path(p).name
        fs.get_file(p, str(target))
        yield target
