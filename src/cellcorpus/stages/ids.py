"""`cellcorpus id`: a cell id back to the input file and row it came from (read from the tokenize manifest)."""

from __future__ import annotations

import numpy as np

from cellcorpus.config import Config
from cellcorpus.core.ids import decode_ids
from cellcorpus.errors import ConfigError, InputError
from cellcorpus.io.paths import join
from cellcorpus.layout import MANIFEST, Layout
from cellcorpus.manifest import TokenizeManifest, read_manifest

__all__ = ["decode_cell_id"]


def decode_cell_id(cfg: Config, cell_id: int) -> tuple[str, int]:
    """(input file path, row in that file) of a cell `id` of the dataset `cfg` describes.

    An id is `(file_index << 32) | row_in_file`; `file_index` is the input's position in the sorted listing,
    recorded in the tokenize manifest.
    """
    hf = cfg.need("huggingface")
    manifest = read_manifest(Layout.of(cfg).merged_root(), MANIFEST, TokenizeManifest)
    if manifest is None:
        raise ConfigError(f"no tokenize manifest in {hf.merged_dataset_root}", hint="run `cellcorpus tokenize`")
    f, r = decode_ids(np.array([cell_id], dtype=np.int64))
    by_index = {i.file_index: i for i in manifest.inputs}
    record = by_index.get(int(f[0]))
    if record is None or not 0 <= int(r[0]) < record.n_obs:
        raise InputError(f"id {cell_id} is not a cell of this dataset (file {int(f[0])}, row {int(r[0])})")
    return join(hf.adata_dir, record.path), int(r[0])
