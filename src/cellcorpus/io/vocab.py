"""Read a GeneVocab JSON (token -> index): every stage that maps genes reads the vocabulary through here."""

from __future__ import annotations

import json
from pathlib import Path

from cellcorpus.errors import ConfigError, InputError

__all__ = ["load_vocab"]


def load_vocab(path: str) -> dict[str, int]:
    """Read a GeneVocab JSON (token -> index); a clear error if it is absent or malformed."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"vocabulary not found: {path}", hint="run `cellcorpus vocab CONFIG` first")
    try:
        vocab = json.loads(p.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: not valid JSON: {exc}") from exc
    if not isinstance(vocab, dict) or not all(isinstance(v, int) for v in vocab.values()):
        raise InputError(f"{path}: a vocabulary must map token -> integer index")
    return vocab
