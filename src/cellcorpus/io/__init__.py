"""I/O helpers: paths (local or fsspec URL), atomic writes, row-range h5ad reads, metadata tables."""
