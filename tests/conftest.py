"""Shared fixtures: tiny real inputs with hand-computable values (STYLE.md §6); helpers live in tests/_utils.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests._utils import base_config, set_dotted, write_vocab


@pytest.fixture
def write_config(tmp_path: Path):
    """write_config(**{"huggingface.unit_cells": 2}) -> path of a YAML config rooted at tmp_path."""

    def _write(root: Path | None = None, drop: tuple[str, ...] = (), **overrides: Any) -> Path:
        root = root or tmp_path
        cfg = base_config(root)
        for k, v in overrides.items():
            set_dotted(cfg, k, v)
        for k in drop:
            cfg.pop(k, None)
        path = root / "config.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(cfg))
        return path

    return _write


@pytest.fixture
def tiny_vocab(tmp_path: Path) -> dict[str, int]:
    return write_vocab(tmp_path / "vocab" / "vocab.json")
