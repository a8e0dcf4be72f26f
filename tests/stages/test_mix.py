"""`cellcorpus mix`: the streams block of finished corpora, with the cells per source per epoch that a
mosaicml-streaming `StreamingDataset` (the test-only `mosaicml-streaming` dependency) actually draws."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import yaml
from typer.testing import CliRunner

from cellcorpus import mix
from cellcorpus.cli import app
from cellcorpus.config import load_config
from cellcorpus.errors import ConfigError
from cellcorpus.pipeline import run_pipeline
from tests._utils import GENES, config_file, make_h5ad, write_vocab
from tests.streaming_compat import import_streaming

CELLS = {"atlas": 300, "perturb": 120, "small": 40}  # cells per source (before the 80/20 split)


def _corpus(root: Path, name: str, n: int, seed: int) -> str:
    """A finished corpus of `n` cells whose every row carries its source's name (column `source`)."""
    write_vocab(root / "vocab" / "vocab.json")
    rng = np.random.default_rng(seed)
    m = sp.random(n, len(GENES), density=0.6, random_state=rng, format="csr", dtype=np.float32)
    m.data = np.ceil(m.data * 9)
    make_h5ad(root / "raw" / "f0.h5ad", m, GENES, {"source": [name] * n})
    path = Path(config_file(root, **{"huggingface.obs_metadata_columns": ["source"], "mds.columns.source": "str"}))
    named = path.with_name(f"{name}.yaml")
    path.rename(named)
    run_pipeline(load_config(named))
    return str(named)


@pytest.fixture(scope="module")
def corpora(tmp_path_factory) -> dict[str, str]:
    base = tmp_path_factory.mktemp("mix")
    return {name: _corpus(base / name, name, n, k) for k, (name, n) in enumerate(CELLS.items())}


def _train_cells(cfg: str) -> int:
    from cellcorpus.config import load_config
    from cellcorpus.layout import Layout
    from cellcorpus.manifest import MdsManifest, read_manifest

    pub = Layout.of(load_config(cfg)).mds
    return read_manifest(pub, "manifest.json", MdsManifest).splits["train"].samples


def _drawn(streams: dict, tmp_path: Path) -> Counter:
    """Per-source samples one epoch of a StreamingDataset over `streams` yields (shuffled, as training reads)."""
    streaming = import_streaming()
    ss = [streaming.Stream(**s) for s in streams.values()]
    ds = streaming.StreamingDataset(
        streams=ss, shuffle=True, shuffle_seed=7, batch_size=1, num_canonical_nodes=1, allow_unsafe_types=True
    )
    try:
        return Counter(sample["source"] for sample in ds)
    finally:
        streaming.base.util.clean_stale_shared_memory()


def test_proportions_are_what_streaming_draws(corpora, tmp_path):
    configs = list(corpora.values())
    train = {n: _train_cells(c) for n, c in corpora.items()}
    mixed = mix(configs, proportions={"atlas": 2, "perturb": 1, "small": 1}, out=str(tmp_path / "m"))
    total = sum(train.values())
    want = {"atlas": total / 2, "perturb": total / 4, "small": total / 4}
    assert {s["source"]: s["cells_per_epoch"] for s in mixed.table()} == {n: round(v) for n, v in want.items()}
    written = yaml.safe_load((tmp_path / "m" / "streams.yaml").read_text())
    streams = written["train_loader"]["dataset"]["streams"]
    assert list(streams) == ["atlas", "perturb", "small"]
    assert streams["small"] == {
        "local": str(Path(corpora["small"]).parent / "mds" / "train"),
        "choose": round(want["small"]),
    }
    drawn = _drawn(streams, tmp_path)
    assert drawn == Counter({n: round(v) for n, v in want.items()})  # exactly the table's cells per epoch
    epoch = sum(drawn.values())
    for name, share in {"atlas": 0.5, "perturb": 0.25, "small": 0.25}.items():
        assert abs(drawn[name] / epoch - share) <= 0.02, (name, drawn)  # "small" repeats its cells to get there
    valid = written["valid_loader"]["dataset"]["streams"]
    assert set(valid) == set(CELLS) and all("choose" not in s for s in valid.values())  # validation: whole
    with open(tmp_path / "m" / "cells_per_epoch.tsv") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    assert [(r["source"], int(r["train_cells"]), float(r["proportion"])) for r in rows] == [
        ("atlas", train["atlas"], 0.5), ("perturb", train["perturb"], 0.25), ("small", train["small"], 0.25)
    ]  # fmt: skip


def test_a_cap_shrinks_the_epoch_and_keeps_the_shares(corpora):
    props = {"atlas": 1, "perturb": 1, "small": 1}
    mixed = mix(list(corpora.values()), proportions=props, caps={"atlas": 30})
    assert [r["cells_per_epoch"] for r in mixed.table()] == [30, 30, 30]


def test_without_proportions_sources_are_whole_or_capped(corpora, tmp_path):
    train = {n: _train_cells(c) for n, c in corpora.items()}
    mixed = mix(list(corpora.values()), caps={"atlas": 50})
    streams = mixed.streams()["train_loader"]["dataset"]["streams"]
    assert streams["atlas"]["choose"] == 50 and "choose" not in streams["perturb"]
    assert _drawn(streams, tmp_path) == Counter({"atlas": 50, "perturb": train["perturb"], "small": train["small"]})


def test_cli_writes_the_files_and_names_bad_options(corpora, tmp_path):
    runner = CliRunner()
    args = ["mix", *corpora.values(), "--out", str(tmp_path / "cli")]
    res = runner.invoke(app, [*args, "--proportion", "atlas=3", "--proportion", "perturb=1", "--proportion", "small=1"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "cli" / "streams.yaml").is_file() and (tmp_path / "cli" / "cells_per_epoch.tsv").is_file()
    res = runner.invoke(app, [*args, "--proportion", "atlas=1"])
    assert res.exit_code != 0 and "no proportion for perturb, small" in res.output
    res = runner.invoke(app, [*args, "--cap", "atlas"])
    assert res.exit_code != 0 and "--cap atlas: expected NAME=INT" in res.output
    res = runner.invoke(app, [*args, "--cap", "nope=3"])
    assert res.exit_code != 0 and "unknown source nope" in res.output


def test_sources_must_share_the_vocabulary(corpora, tmp_path):
    other = tmp_path / "other"
    cfg = _corpus(other, "other", 30, 9)
    vocab = other / "vocab" / "vocab.json"
    vocab.write_text(vocab.read_text().replace('"<eoc>": 2', '"<eoc>": 2, "<junk>": 99'))
    with pytest.raises(ConfigError, match="other and atlas use different encodings or vocabularies"):
        mix([corpora["atlas"], cfg])


def test_an_unfinished_corpus_is_named(tmp_path):
    write_vocab(tmp_path / "vocab" / "vocab.json")
    cfg = config_file(tmp_path)
    with pytest.raises(ConfigError, match="no finished MDS export in"):
        mix([cfg])


def test_an_object_store_corpus_is_fetched_into_the_local_root():
    from cellcorpus.stages.mix import Mix, MixSource

    src = MixSource("census", "census.yaml", "s3://bucket/census_MDS/", {"train": 10, "valid": 2}, ("tahoe_x1", "x"))
    streams = Mix([src], {"census": 4}, {"census": 1.0}).streams("cache")
    assert streams == {
        "train_loader": {"dataset": {"streams": {"census": {
            "remote": "s3://bucket/census_MDS/train", "local": "cache/census/train", "choose": 4}}}},
        "valid_loader": {"dataset": {"streams": {"census": {
            "remote": "s3://bucket/census_MDS/valid", "local": "cache/census/valid"}}}},
    }  # fmt: skip


def test_the_same_corpus_twice_is_refused(corpora, tmp_path):
    import shutil

    twin = tmp_path / "twin.yaml"
    shutil.copy(corpora["small"], twin)  # another name, the same corpus
    with pytest.raises(ConfigError, match="small and twin are the same corpus"):
        mix([corpora["small"], str(twin)])
