"""`cellcorpus drugs`: drug ids and Morgan fingerprints for the Tahoe-x1 chemistry token.

Writes `drug_to_id` (JSON: `<pad>` -> 0, then every drug with a usable SMILES, in table order) and
`drug_fps` (`.npy`, float64, shape (n_drugs + 1, n_bits), row 0 zeros, row i the Morgan bits of drug i),
the layout of the reference `generate_fingerprints.py`. Unlike it: an unparseable SMILES is an error (or,
by config, skipped) instead of NaN in an integer array; a duplicated drug name keeps its first row instead
of silently overwriting an id; missing and duplicated SMILES are counted and named. The collator maps a
cell's `drug` through `drug_to_id`, so the keys are the table's names exactly as tokenize writes them.
"""

from __future__ import annotations

import io
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import xxhash

from cellcorpus.config import Config, DrugsConfig, config_hash
from cellcorpus.errors import ConfigError, InputError, MissingExtraError
from cellcorpus.io.atomic import atomic_path, remove_temporaries, write_json_atomic
from cellcorpus.io.paths import filesystem
from cellcorpus.io.tables import as_strings, read_frame
from cellcorpus.layout import DRUG_PAD
from cellcorpus.manifest import DrugsManifest, file_checksum, mapping_checksum, parse_manifest, write_manifest
from cellcorpus.plan import Plan, plan_for
from cellcorpus.stages.base import StageSummary, locked

__all__ = ["run_drugs", "DrugPlan", "plan_drugs", "morgan_fingerprints"]

log = logging.getLogger(__name__)

_SHOWN = 8


def _rdkit() -> Any:
    try:
        from rdkit import Chem, RDLogger, rdBase
        from rdkit.Chem import rdFingerprintGenerator
    except ImportError as exc:
        raise MissingExtraError(
            "the drugs stage computes Morgan fingerprints with RDKit, which is not installed",
            hint="pip install 'cellcorpus[chem]'",
        ) from exc
    RDLogger.DisableLog("rdApp.*")  # parse failures are counted and named by this stage, not printed by RDKit
    return Chem, rdFingerprintGenerator, rdBase.rdkitVersion


@dataclass
class DrugPlan:
    """The table read into ids: who gets a row, and everything left out or doubtful, by name."""

    names: list[str] = field(default_factory=list)  # id i = position + 1
    smiles: list[str] = field(default_factory=list)
    missing_smiles: list[str] = field(default_factory=list)
    missing_names: int = 0
    duplicated_names: list[str] = field(default_factory=list)
    invalid_smiles: list[str] = field(default_factory=list)
    shared_smiles: list[list[str]] = field(default_factory=list)  # names sharing one SMILES (all kept)


def plan_drugs(names: np.ndarray, smiles: np.ndarray, parses: Any) -> DrugPlan:
    """Assign ids in table order; `parses(smiles) -> bool` decides validity (RDKit in the stage)."""
    plan = DrugPlan()
    seen: set[str] = set()
    by_smiles: dict[str, list[str]] = {}
    for name, smi in zip(names, smiles, strict=True):  # one row per drug (hundreds), not per cell
        name, smi = str(name).strip(), str(smi).strip()
        if not name:
            plan.missing_names += 1
            continue
        if name in seen:
            plan.duplicated_names.append(name)
            continue
        seen.add(name)
        if not smi:
            plan.missing_smiles.append(name)
            continue
        if not parses(smi):
            plan.invalid_smiles.append(name)
            continue
        plan.names.append(name)
        plan.smiles.append(smi)
        by_smiles.setdefault(smi, []).append(name)
    plan.shared_smiles = [group for group in by_smiles.values() if len(group) > 1]
    return plan


def morgan_fingerprints(smiles: list[str], radius: int, n_bits: int) -> np.ndarray:
    """float64 (len(smiles) + 1, n_bits): row 0 zeros (padding), row i the Morgan bits of smiles[i - 1].

    RDKit's generator API gives the same bits as `AllChem.GetMorganFingerprintAsBitVect(mol, radius, n_bits)`.
    """
    chem, generators, _ = _rdkit()
    gen = generators.GetMorganGenerator(radius=radius, fpSize=n_bits)
    fps = np.zeros((len(smiles) + 1, n_bits), dtype=np.float64)
    for i, smi in enumerate(smiles, start=1):
        fps[i] = gen.GetFingerprintAsNumPy(chem.MolFromSmiles(smi))
    return fps


def _shown(names: list[str]) -> str:
    return ", ".join(names[:_SHOWN]) + (f" (+{len(names) - _SHOWN} more)" if len(names) > _SHOWN else "")


def _table_checksum(path: str) -> str:
    fs, p = filesystem(path)
    if not fs.exists(p):
        raise ConfigError(f"drugs.table: file not found: {path}")
    return file_checksum(path)


def _read_plan(dc: DrugsConfig, parses: Any) -> DrugPlan:
    df = read_frame(dc.table)
    for key in ("name_column", "smiles_column"):
        col = getattr(dc, key)
        if col not in df.columns:
            raise ConfigError(
                f"drugs.{key}: '{col}' is not a column of {dc.table}",
                hint=f"columns: {', '.join(map(str, df.columns))}",
            )
    return plan_drugs(as_strings(df[dc.name_column].to_numpy()), as_strings(df[dc.smiles_column].to_numpy()), parses)


@locked("drugs")
def run_drugs(cfg: Config | Plan) -> StageSummary:
    """Write drug_to_id + drug_fps (and a manifest); skips when they already match this table and settings."""
    resolved = plan_for(cfg, "drugs")  # (`locked` resolved it: this is that plan)
    cfg = resolved.cfg
    dc: DrugsConfig = cfg.need("drugs")
    chem, _, rdkit_version = _rdkit()
    table_checksum = _table_checksum(dc.table)
    settings = dc.model_dump(mode="json", exclude={"table", "output_root", "drug_to_id_file", "fingerprints_file"})
    stage_hash = config_hash(settings, table_checksum, rdkit_version)
    manifest_path = Path(resolved.layout.drugs_manifest)
    for name in (dc.drug_to_id_file, dc.fingerprints_file, manifest_path.name):  # left by a killed run
        remove_temporaries(dc.output_root, name)
    outputs = {"drug_to_id": dc.drug_to_id_path, "fingerprints": dc.fingerprints_path}
    if manifest_path.is_file() and Path(dc.drug_to_id_path).is_file() and Path(dc.fingerprints_path).is_file():
        try:
            previous: DrugsManifest | None = parse_manifest(
                json.loads(manifest_path.read_text()), DrugsManifest, str(manifest_path)
            )
        except (json.JSONDecodeError, InputError):
            previous = None  # damaged: the outputs are simply written again
        if previous is not None and previous.config_hash == stage_hash:
            return StageSummary("drugs", skipped=True, counts=previous.counts, outputs=outputs)
    plan = _read_plan(dc, lambda smi: chem.MolFromSmiles(smi) is not None)
    if plan.invalid_smiles and dc.on_invalid_smiles == "error":
        raise InputError(
            f"{dc.table}: {len(plan.invalid_smiles)} SMILES that RDKit cannot parse: {_shown(plan.invalid_smiles)}",
            hint="fix them in the table, or set drugs.on_invalid_smiles: skip (those drugs then map to <pad>)",
        )
    if not plan.names:
        raise InputError(f"{dc.table}: no drug with a usable SMILES in '{dc.smiles_column}'")
    fps = morgan_fingerprints(plan.smiles, dc.radius, dc.n_bits)
    drug_to_id = {DRUG_PAD: 0, **{name: i for i, name in enumerate(plan.names, start=1)}}
    buf = io.BytesIO()
    np.save(buf, fps, allow_pickle=False)
    with atomic_path(dc.fingerprints_path) as tmp:
        tmp.write_bytes(buf.getvalue())
    write_json_atomic(dc.drug_to_id_path, drug_to_id, sort_keys=False)  # id order, as the reference writes it
    counts = {
        "drugs_with_ids": len(plan.names),
        "missing_smiles": len(plan.missing_smiles),
        "invalid_smiles_skipped": len(plan.invalid_smiles),
        "duplicated_names": len(plan.duplicated_names),
        "drugs_sharing_a_smiles": sum(len(g) for g in plan.shared_smiles),
        "rows_without_a_name": plan.missing_names,
    }
    notes = []
    for label, names in (
        ("without a SMILES (not given an id)", plan.missing_smiles),
        ("with an unparseable SMILES, skipped (not given an id)", plan.invalid_smiles),
        ("named twice (first row kept)", plan.duplicated_names),
    ):
        if names:
            notes.append(f"{len(names)} drug(s) {label}: {_shown(names)}")
    for group in plan.shared_smiles:
        notes.append(f"drugs with the same SMILES (identical fingerprints): {_shown(group)}")
    write_manifest(
        manifest_path,
        DrugsManifest,
        stage="drugs",
        config_hash=stage_hash,
        table=cfg.for_output("drugs.table", dc.table),
        table_xxh64=table_checksum,
        rdkit_version=rdkit_version,
        radius=dc.radius,
        n_bits=dc.n_bits,
        counts=counts,
        missing_smiles=plan.missing_smiles,
        invalid_smiles=plan.invalid_smiles,
        duplicated_names=plan.duplicated_names,
        shared_smiles=plan.shared_smiles,
        rows_xxh64=[xxhash.xxh64(row.tobytes()).hexdigest() for row in fps],
        drug_to_id_xxh64=mapping_checksum(drug_to_id),
    )
    return StageSummary("drugs", counts=counts, outputs=outputs, notes=notes)
