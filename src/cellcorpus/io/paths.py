"""Paths that may be local folders or fsspec URLs (s3://, gs://, memory://, file://)."""

from __future__ import annotations

from pathlib import Path

import fsspec

__all__ = ["is_url", "join", "filesystem", "exists"]


def is_url(path: str) -> bool:
    return "://" in path


def join(root: str, name: str) -> str:
    """Join `name` onto `root`; an absolute path or URL `name` wins (seed configs mix both)."""
    if is_url(name) or Path(name).is_absolute():
        return name
    if is_url(root):
        return f"{root.rstrip('/')}/{name}"
    return str(Path(root) / name)


def filesystem(path: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """fsspec filesystem + stripped path for a local path or URL."""
    fs, _, paths = fsspec.get_fs_token_paths(path)
    return fs, paths[0]


def exists(path: str) -> bool:
    if not is_url(path):
        return Path(path).exists()
    fs, p = filesystem(path)
    return fs.exists(p)
