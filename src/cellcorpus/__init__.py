"""cellcorpus: tokenized single-cell pretraining corpora (Tahoe-x1 v2 recipe) as one resumable tool.

The stages are importable for use from Python (`cellcorpus.stages.tokenize.run_tokenize(cfg)` etc.);
`load_config` reads and validates a seed-layout YAML config.
"""

__version__ = "0.1.0"

from cellcorpus.config import Config, load_config  # noqa: E402 - after __version__, which manifest.py reads

__all__ = ["__version__", "Config", "load_config"]
