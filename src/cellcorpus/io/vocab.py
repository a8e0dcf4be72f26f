"""Read a GeneVocab JSON (token -> index): every stage that maps genes reads the vocabulary through here."""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

from cellcorpus.core.vocab import VocabLookup
from cellcorpus.errors import ConfigError, InputError

__all__ = ["load_vocab", "vocab_lookup"]


def vocab_lookup(path: str) -> VocabLookup:
    """The vocabulary at `path` as a gene lookup, built once per process and file version (every unit of a
    stage shares it, and the gene_id_map tables cached for it)."""
    return _lookup(path, os.stat(path).st_mtime_ns) if os.path.isfile(path) else VocabLookup(load_vocab(path))


@functools.lru_cache(maxsize=4)
def _lookup(path: str, mtime_ns: int) -> VocabLookup:
    del mtime_ns  # cache key only
    return VocabLookup(load_vocab(path))


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
