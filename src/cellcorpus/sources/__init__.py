"""Input sources: local h5ad folders, Tahoe-100M parquet, and downloaders for remote atlases."""
