"""drugs stage: ids and fingerprints equal a direct RDKit computation; every doubtful row named and counted."""

from __future__ import annotations

import json
import sys

import numpy as np
import pandas as pd
import pytest

from cellcorpus.config import load_config
from cellcorpus.errors import InputError, MissingExtraError, VerifyError
from cellcorpus.stages.drugs import run_drugs
from cellcorpus.stages.tokenize import run_tokenize
from cellcorpus.stages.verify import run_verify
from tests._utils import random_corpus

Chem = pytest.importorskip("rdkit.Chem")

ASPIRIN = "CC(=O)Oc1ccccc1C(=O)O"
CAFFEINE = "Cn1cnc2c1c(=O)n(C)c(=O)n2C"
IBUPROFEN = "CC(C)Cc1ccc(cc1)C(C)C(=O)O"
TABLE = pd.DataFrame(
    {
        "drug": ["aspirin", "caffeine", "broken", "nosmiles", "aspirin", "ibuprofen", "acetylsalicylic acid"],
        "canonical_smiles": [ASPIRIN, CAFFEINE, "C1CC(C", "", CAFFEINE, IBUPROFEN, ASPIRIN],
    }
)


def _reference_bits(smiles: str, radius: int = 2, n_bits: int = 2048) -> np.ndarray:
    """What Tahoe-x1's generate_fingerprints.py computes for one SMILES."""
    from rdkit.Chem import AllChem
    from rdkit.DataStructs import ConvertToNumpyArray

    out = np.zeros(n_bits, dtype=np.float64)
    ConvertToNumpyArray(AllChem.GetMorganFingerprintAsBitVect(Chem.MolFromSmiles(smiles), radius, nBits=n_bits), out)
    return out


def _config(tmp_path, write_config, policy="skip", **extra):
    table = tmp_path / "drugs.csv"
    TABLE.to_csv(table, index=False)
    drugs = {"table": str(table), "output_root": str(tmp_path / "drugs"), "on_invalid_smiles": policy, **extra}
    return load_config(write_config(drugs=drugs))


def test_ids_and_fingerprints_equal_rdkit_and_doubts_are_named(tmp_path, write_config):
    s = run_drugs(_config(tmp_path, write_config))
    ids = json.loads((tmp_path / "drugs" / "drug_to_id.json").read_text())
    assert list(ids.items()) == [
        ("<pad>", 0),
        ("aspirin", 1),
        ("caffeine", 2),
        ("ibuprofen", 3),
        ("acetylsalicylic acid", 4),
    ]
    fps = np.load(tmp_path / "drugs" / "drug_fps.npy")
    assert fps.shape == (5, 2048) and fps.dtype == np.float64 and not fps[0].any()
    for i, smi in enumerate([ASPIRIN, CAFFEINE, IBUPROFEN, ASPIRIN], start=1):
        assert np.array_equal(fps[i], _reference_bits(smi))
    assert s.counts == {
        "drugs_with_ids": 4,
        "missing_smiles": 1,
        "invalid_smiles_skipped": 1,
        "duplicated_names": 1,
        "drugs_sharing_a_smiles": 2,
        "rows_without_a_name": 0,
    }
    notes = "\n".join(s.notes)
    assert "without a SMILES (not given an id): nosmiles" in notes
    assert "unparseable SMILES, skipped (not given an id): broken" in notes
    assert "named twice (first row kept): aspirin" in notes
    assert "same SMILES (identical fingerprints): aspirin, acetylsalicylic acid" in notes
    manifest = json.loads((tmp_path / "drugs" / "drugs_manifest.json").read_text())
    assert manifest["rdkit_version"] and len(manifest["table_xxh64"]) == 16


def test_radius_and_bits_are_configurable(tmp_path, write_config):
    run_drugs(_config(tmp_path, write_config, radius=3, n_bits=1024))
    fps = np.load(tmp_path / "drugs" / "drug_fps.npy")
    assert fps.shape == (5, 1024) and np.array_equal(fps[2], _reference_bits(CAFFEINE, 3, 1024))


def test_unparseable_smiles_stop_by_default_with_names(tmp_path, write_config):
    with pytest.raises(InputError, match=r"drugs\.csv: 1 SMILES that RDKit cannot parse: broken"):
        run_drugs(_config(tmp_path, write_config, policy="error"))
    assert not (tmp_path / "drugs").exists()


def test_rerun_skips_and_a_changed_table_rewrites(tmp_path, write_config):
    cfg = _config(tmp_path, write_config)
    run_drugs(cfg)
    assert run_drugs(cfg).skipped
    TABLE.iloc[:2].to_csv(tmp_path / "drugs.csv", index=False)
    again = run_drugs(cfg)
    assert not again.skipped and again.counts["drugs_with_ids"] == 2


def test_without_rdkit_the_extra_is_named(tmp_path, write_config, monkeypatch):
    monkeypatch.setitem(sys.modules, "rdkit", None)
    with pytest.raises(MissingExtraError) as info:
        run_drugs(_config(tmp_path, write_config))
    assert "cellcorpus[chem]" in info.value.hint


def test_verify_checks_the_files_and_counts_unmapped_drugs(tmp_path, write_config):
    random_corpus(tmp_path, n_cells=200, seed=4, n_drugs=3)  # drugs d0, d1, d2 in obs
    table = tmp_path / "drugs.csv"
    pd.DataFrame({"drug": ["d0", "d1"], "canonical_smiles": [ASPIRIN, CAFFEINE]}).to_csv(table, index=False)
    cfg = load_config(
        write_config(
            drop=("mds",),
            drugs={"table": str(table), "output_root": str(tmp_path / "drugs")},
            **{"huggingface.obs_metadata_columns": ["drug"]},
        )
    )
    run_drugs(cfg)
    run_tokenize(cfg)
    rep = run_verify(cfg)
    n_d2 = 2 * sum(1 for i in range(200) if i % 3 == 2)
    assert rep.notes == [f"{n_d2:,} cells have a drug not in drug_to_id (mapped to <pad>): d2 ({n_d2:,})"]
    fps_path = tmp_path / "drugs" / "drug_fps.npy"
    fps = np.load(fps_path)
    fps[2, :5] = 1 - fps[2, :5]
    np.save(fps_path, fps)
    with pytest.raises(VerifyError, match=r"drug fingerprint rows as written: .*row 2 \(d1\) differs"):
        run_verify(cfg)


def test_demo_without_rdkit_skips_fingerprints_with_a_note_and_run_stops_early(tmp_path, monkeypatch):
    import importlib.util

    from cellcorpus.demo import make_demo_atlas
    from cellcorpus.pipeline import packaged_config, run_demo, run_pipeline

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "rdkit" else real(name, *a))
    name, summaries = next(run_demo(tmp_path / "demo"))
    first = next(summaries)
    assert name.endswith("tahoe_100m.yaml") and first.stage == "drugs" and "cellcorpus[chem]" in first.notes[0]
    summaries.close()
    make_demo_atlas(tmp_path / "atlas")
    cfg = load_config(packaged_config("tahoe_x1_v2/tahoe_100m.yaml"), [f"output_root={tmp_path / 'atlas'}"])
    with pytest.raises(MissingExtraError, match="RDKit"):
        run_pipeline(cfg)  # runs when called: stops at once
    assert not (tmp_path / "atlas" / "vocab").exists()  # stopped before any stage ran
