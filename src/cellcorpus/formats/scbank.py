"""scGPT's scBank folder (`<name>.scb/`), as its `DataBank` writes and `DataBank.from_path` reads it.

`counts.datatable.parquet` (columns `id`, `genes`, `expressions`: each cell's non-zero genes and raw counts,
without `<cls>`, which scGPT's pretraining prepends itself), `gene_vocab.json` (token -> index),
`manifest.json` (`on_disk_format`, `main_data`, `gene_vocab_md5`) and `studytable.json`. Written from a finished
Arrow split one record batch at a time, into a temporary folder renamed into place when whole.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from cellcorpus.io.paths import local_copy

__all__ = ["write_scbank", "SCBANK_MARKER"]

SCBANK_MARKER = "manifest.json"  # written last into the temporary folder: a folder with it is whole
_SCHEMA = pa.schema([("id", pa.int64()), ("genes", pa.list_(pa.int64())), ("expressions", pa.list_(pa.float32()))])


def write_scbank(
    data_files: Sequence[str | Path], dest: Path, vocab: dict[str, int], tokens: str, values: str, skip: int
) -> int:
    """Write `dest` (`<name>.scb/`) from the Arrow data files' (paths or URLs: a remote file is fetched, one at a
    time) `tokens`/`values` lists, their first `skip`
    entries (the CLS) left out; returns the cells written. An earlier `dest` is replaced only when it is an scBank
    folder (it holds the marker)."""
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    n = 0
    with pq.ParquetWriter(tmp / "counts.datatable.parquet", _SCHEMA) as writer:
        for path in data_files:
            with local_copy(str(path)) as local, pa.OSFile(str(local)) as f:
                for batch in pa.ipc.open_stream(f):
                    genes = pc.list_slice(batch.column(tokens), skip).cast(pa.list_(pa.int64()))
                    exprs = pc.list_slice(batch.column(values), skip).cast(pa.list_(pa.float32()))
                    writer.write_batch(pa.record_batch([batch.column("id"), genes, exprs], schema=_SCHEMA))
                    n += batch.num_rows
    (tmp / "gene_vocab.json").write_text(json.dumps(vocab, indent=2))
    (tmp / "studytable.json").write_text(json.dumps({"study_ids": None}, indent=2))
    manifest = {"on_disk_format": "parquet", "main_data": "counts", "gene_vocab_md5": None}
    (tmp / SCBANK_MARKER).write_text(json.dumps(manifest, indent=2))
    if dest.exists():
        if not (dest / SCBANK_MARKER).is_file():
            shutil.rmtree(tmp)
            raise FileExistsError(f"{dest}: exists and is not an scBank folder cellcorpus wrote; left untouched")
        shutil.rmtree(dest)
    os.replace(tmp, dest)
    return n
