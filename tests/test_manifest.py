"""Typed manifests: every stage writes a `manifest_version`; a damaged or newer manifest is named, not a crash."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from cellcorpus.errors import InputError
from cellcorpus.io.paths import Publisher
from cellcorpus.manifest import MANIFEST_VERSION, TokenizeManifest, read_manifest, write_manifest


def _tokenize_manifest(path, damage=None, **extra):
    body = {
        "settings_hash": "s",
        "metadata_columns": ["index"],
        "inputs": [{"file_index": 0, "path": "a.h5ad", "bytes": 10, "checksum": "c", "n_obs": 3}],
        "units": [],
        "splits": {"train": [{"path": "data-00000-of-00001.arrow", "bytes": 5, "xxh64": "x", "n_cells": 3}]},
        "totals": {"cells_read": 3},
        **extra,
    }
    write_manifest(path / "manifest.json", TokenizeManifest, stage="tokenize", config_hash="h", **body)
    if damage:  # changed after it was written (the writer validates what it writes)
        record = json.loads((path / "manifest.json").read_text())
        (path / "manifest.json").write_text(json.dumps({**record, **damage}))


def test_written_with_its_version_and_read_typed(tmp_path):
    _tokenize_manifest(tmp_path)
    assert json.loads((tmp_path / "manifest.json").read_text())["manifest_version"] == MANIFEST_VERSION
    m = read_manifest(Publisher(str(tmp_path), "."), "manifest.json", TokenizeManifest)
    assert m is not None and m.inputs[0].n_obs == 3 and m.splits["train"][0].n_cells == 3


def test_damaged_and_newer_manifests_are_named(tmp_path):
    _tokenize_manifest(tmp_path, damage={"totals": "many"})
    with pytest.raises(InputError, match=r"manifest\.json: damaged manifest \(totals: "):
        read_manifest(Publisher(str(tmp_path), "."), "manifest.json", TokenizeManifest)
    _tokenize_manifest(tmp_path, damage={"manifest_version": MANIFEST_VERSION + 1})
    with pytest.raises(InputError, match="written by a newer cellcorpus"):
        read_manifest(Publisher(str(tmp_path), "."), "manifest.json", TokenizeManifest)


def test_a_manifest_is_validated_as_it_is_written(tmp_path):
    """What a stage writes is what its readers parse: a mistyped or missing field fails in the writer, and
    nothing is written; the file holds exactly the keys given (no defaults added)."""
    with pytest.raises(ValidationError, match="totals"):
        _tokenize_manifest(tmp_path, totals="many")
    assert not (tmp_path / "manifest.json").exists()
    _tokenize_manifest(tmp_path)
    written = json.loads((tmp_path / "manifest.json").read_text())
    assert "dataset_name" not in written and "settings" not in written  # defaults of the model, not given
