"""cellcorpus: tokenized single-cell pretraining corpora (Tahoe-x1 v2 recipe) as one resumable tool.

The stages are importable for use from Python (`cellcorpus.stages.tokenize.run_tokenize(cfg)` etc.);
`load_config` reads and validates a seed-layout YAML config.
"""

from cellcorpus._version import __version__
from cellcorpus.api import build_vocab, decode_id, dedup, mix, tokenize_anndata
from cellcorpus.config import Config, load_config
from cellcorpus.pipeline import run_pipeline

__all__ = [
    "__version__",
    "Config",
    "load_config",
    "run_pipeline",
    "tokenize_anndata",
    "decode_id",
    "build_vocab",
    "mix",
    "dedup",
]
