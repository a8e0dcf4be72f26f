"""Where work units run: inline, a local process pool, or a Dask cluster (one seam)."""
