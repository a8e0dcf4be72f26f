"""JSON files are written exactly as `json.dumps(indent=2)` writes them, also on the fast path for flat mappings
(the vocabulary: Tahoe-x1's GeneVocab reads it, and its bytes are part of a run's identity)."""

from __future__ import annotations

import json

import pytest

from cellcorpus.io.atomic import write_json_atomic

CASES = [
    {},
    {"a": 1},
    {"b": 2, "a": 'x\n"y', "c": None, "d": 1.5, "e": True, "é": 3},  # escapes, non-ASCII, every scalar
    {"x": {"y": 1}},  # nested: the standard indented encoder
    [1, 2],
    {"k": [1]},
    {f"ENSG{i:011d}": i for i in range(5000)},
    {"n": float("nan"), 3: "int key"},
]


@pytest.mark.parametrize("obj", CASES)
@pytest.mark.parametrize("sort_keys", [True, False])
def test_written_bytes_are_json_dumps_indent_2(tmp_path, obj, sort_keys):
    if sort_keys and 3 in getattr(obj, "keys", lambda: [])():
        pytest.skip("mixed key types cannot be sorted (json.dumps refuses too)")
    path = tmp_path / "x.json"
    write_json_atomic(path, obj, sort_keys=sort_keys)
    assert path.read_text() == json.dumps(obj, indent=2, sort_keys=sort_keys) + "\n"
