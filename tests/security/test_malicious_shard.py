"""A hostile MDS shard: `verify` never executes a pickle it reads back (trust rules, issue 20 item 1).

The attacker rewrites one sample with a `__reduce__` payload, recompresses the shard and updates sha1/xxh64
in both index files, so every hash check passes. Verify must report the sample as a failure, naming shard and
sample, and the payload must never run. Cases: each `pkl` column; a config that is pickle-free (`ndarray`)
while the shard header claims `pkl`; and the `id` column declared `pkl`.
"""

from __future__ import annotations

import json
import os
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import zstandard

from cellcorpus.config import load_config
from cellcorpus.errors import VerifyError
from cellcorpus.formats.mds import hash_bytes, iter_samples, parse_shard
from cellcorpus.stages.mds import run_mds
from cellcorpus.stages.tokenize import run_tokenize
from cellcorpus.stages.verify import run_verify
from tests._utils import random_corpus

PKL = {"genes": "pkl", "expressions": "pkl", "id": "int64"}
NDARRAY = {"genes": "ndarray:int32", "expressions": "ndarray:float32", "id": "int64"}


class _Payload:
    """Unpickling this creates `marker`: proof that code from the shard ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def _build(root: Path, write_config, columns: dict[str, str]):
    random_corpus(root, n_cells=120, seed=3)
    cfg = load_config(write_config(root, **{"huggingface.unit_cells": 64, "mds.columns": columns}))
    run_tokenize(cfg)
    run_mds(cfg)
    run_verify(cfg)
    return cfg


def _rewrite_sample(root: Path, column: str, payload: bytes, claim: dict[str, str] | None = None) -> str:
    """Replace sample 0's `column` in the first train shard by `payload` (and the header's encodings by
    `claim`), recompress and re-hash everywhere, as an attacker with write access to the folder would."""
    split = root / "mds" / "train"
    index = json.loads((split / "index.json").read_text())
    entry = index["shards"][0]
    zinfo = entry["zip_data"]
    path = split / zinfo["basename"]
    raw = zstandard.ZstdDecompressor().decompress(path.read_bytes())
    config, offsets = parse_shard(raw)
    if claim:
        config["column_encodings"] = [
            claim.get(n, e) for n, e in zip(config["column_names"], config["column_encodings"], strict=True)
        ]
    names, sizes = config["column_names"], config["column_sizes"]
    samples = list(iter_samples(raw, config, offsets))
    samples[0][column] = payload
    sizes = [None if n == column else s for n, s in zip(names, sizes, strict=True)]  # the payload's size varies
    config["column_sizes"] = sizes
    bodies = []
    for cols in samples:
        head = np.array([len(cols[n]) for n, s in zip(names, sizes, strict=True) if s is None], "<u4").tobytes()
        bodies.append(head + b"".join(cols[n] for n in names))
    cfg_bytes = json.dumps(config, sort_keys=True).encode()
    start = 4 + 4 * (len(bodies) + 1) + len(cfg_bytes)
    offs = np.cumsum([start] + [len(b) for b in bodies]).astype("<u4")
    new_raw = np.uint32(len(bodies)).tobytes() + offs.tobytes() + cfg_bytes + b"".join(bodies)
    new_zip = zstandard.ZstdCompressor().compress(new_raw)
    path.write_bytes(new_zip)
    for info, data in ((entry["raw_data"], new_raw), (zinfo, new_zip)):
        info["bytes"] = len(data)
        info["hashes"] = {algo: hash_bytes(algo, data) for algo in info["hashes"]}
    entry["column_encodings"], entry["column_sizes"] = config["column_encodings"], sizes
    (split / "index.json").write_text(json.dumps(index))
    sub = zinfo["basename"].split("/")[0]
    own = json.loads((split / sub / "index.json").read_text())
    local = {k: {**entry[k], "basename": entry[k]["basename"].split("/")[1]} for k in ("raw_data", "zip_data")}
    own["shards"][0] = {**entry, **local}
    (split / sub / "index.json").write_text(json.dumps(own))
    return zinfo["basename"]


@pytest.mark.parametrize(
    "columns, column, claim",
    [
        (PKL, "genes", None),  # declared pkl
        (PKL, "expressions", None),
        (NDARRAY, "genes", {"genes": "pkl"}),  # the config is pickle-free, the shard header claims pkl
        (NDARRAY, "expressions", {"expressions": "pkl"}),
        ({**PKL, "id": "pkl"}, "id", None),  # the id column declared pkl
    ],
)
def test_verify_never_runs_a_pickle_payload(tmp_path, write_config, columns, column, claim):
    cfg = _build(tmp_path, write_config, columns)
    marker = tmp_path / "payload-ran"
    shard = _rewrite_sample(tmp_path, column, pickle.dumps(_Payload(marker)), claim)
    with pytest.raises(VerifyError) as info:
        run_verify(cfg)
    assert not marker.exists(), "verify executed code from a shard"
    report = info.value.report
    if claim is None:  # the hashes were forged to match: only the decoder stands between the payload and a run
        assert report.checks["mds shard hashes"].failed == 0
        decode = report.checks["mds samples decode (no pickle executed)"]
        assert decode.failed == 1
        assert decode.first_failure == f"train/{shard} sample 0: global posix.mkdir is not allowed"
    else:  # the header's encodings differ from the config's: named, and the payload still never runs
        assert report.checks["mds encodings as configured"].failed == 1
        decode = report.checks["mds samples decode (no pickle executed)"]  # every sample is refused, 0 first
        assert decode.failed >= 1 and decode.first_failure.startswith(f"train/{shard} sample 0: ")


def test_pkl_outputs_verify_without_torch(tmp_path, write_config, monkeypatch):
    """Writing and checking `pkl` needs no torch: the demo, verify and report run on a plain install."""
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    _build(tmp_path, write_config, PKL)
