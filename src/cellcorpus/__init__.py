"""cellcorpus: tokenized single-cell pretraining corpora (Tahoe-x1 v2 recipe) as one resumable tool."""

__version__ = "0.1.0"

__all__ = ["__version__"]
