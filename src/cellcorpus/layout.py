"""Where every output and scratch file lives, local folder or fsspec URL: the one place that knows.

Stages ask here instead of importing each other (verify and report read what tokenize and mds wrote), and
no scratch sub-folder name is spelled anywhere else.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from cellcorpus.config import Config, DrugsConfig, HuggingfaceConfig, MdsConfig, config_hash
from cellcorpus.io.paths import Publisher, join

__all__ = [
    "SPLITS",
    "MANIFEST",
    "DRUG_PAD",
    "tokenize_publisher",
    "dataset_dir",
    "parts_dir",
    "units_dir",
    "decompressed_dir",
    "mds_publisher",
    "mds_units_dir",
    "drugs_manifest",
    "REPORT_DIR",
    "VERIFY_RECORD",
    "OUTPUT_RECORDS",
    "scratch_dirs",
    "joins_dir",
    "write_roots",
]

SPLITS = ("train", "valid")  # the seed's split names: <merged_dataset_root>/<split>.dataset
MANIFEST = "manifest.json"  # beside each stage's output, written last
REPORT_DIR = "report"  # under merged_dataset_root
VERIFY_RECORD = "verify.json"  # in REPORT_DIR: the last verify's checks, shown by the report
DRUG_PAD = "<pad>"  # drug_to_id's padding key (id 0, fingerprint row 0)
_DRUGS_MANIFEST = "drugs_manifest.json"
# Names an earlier cellcorpus run leaves in an output root: a folder holding one of them is ours to adopt.
OUTPUT_RECORDS = (MANIFEST, ".units", REPORT_DIR)


def tokenize_publisher(hf: HuggingfaceConfig) -> Publisher:
    """The merged datasets' root; a URL `merged_dataset_root` is staged under the scratch folder."""
    return Publisher(hf.merged_dataset_root, _staging_dir(hf))


def _staging_dir(hf: HuggingfaceConfig) -> Path:
    return Path(hf.output_root) / "staging"


def dataset_dir(hf: HuggingfaceConfig, split: str) -> Path:
    """The local folder a split is written into (the final folder, or its staging copy for a URL root)."""
    return tokenize_publisher(hf).local_dir / f"{split}.dataset"


def parts_dir(hf: HuggingfaceConfig) -> Path:
    """Tokenize units' Arrow parts, per split (removed once the datasets are written)."""
    return Path(hf.output_root) / "parts"


def units_dir(hf: HuggingfaceConfig, ledger: str | None = None) -> Path:
    """Completion records of tokenize (`tokenize`) and of its shuffle (`shuffle-<split>`)."""
    root = Path(hf.output_root) / "units"
    return root / ledger if ledger else root


def decompressed_dir(hf: HuggingfaceConfig) -> Path:
    """`.h5ad.gz` inputs decompressed once (h5py cannot read gzip streams)."""
    return Path(hf.output_root) / "decompressed"


def joins_dir(hf: HuggingfaceConfig) -> Path:
    """On-disk indexes of join tables too large to load in every worker (io/join_index.py)."""
    return Path(hf.output_root) / "joins"


def scratch_dirs(hf: HuggingfaceConfig) -> dict[str, Path]:
    """Tokenize's scratch folders under `huggingface.output_root` (claimed before use, removed only if ours)."""
    return {"parts": parts_dir(hf), "units": units_dir(hf), "decompressed": decompressed_dir(hf),
            "staging": _staging_dir(hf), "joins": joins_dir(hf)}  # fmt: skip


def write_roots(cfg: Config, stage: str, source: str | None = None) -> list[tuple[str, str]]:
    """(config key, local folder) of every root `stage` writes (the ones its lock covers); `run`: all."""
    hf, mds = cfg.huggingface, cfg.mds
    merged = ("huggingface.merged_dataset_root", str(tokenize_publisher(hf).local_dir) if hf else None)
    export = ("mds.out_root", str(mds_publisher(mds).local_dir) if mds else None)
    section = getattr(cfg, source, None) if source else None
    roots = {
        "vocab": [("vocab.output_root", cfg.vocab.output_root if cfg.vocab else None)],
        "drugs": [("drugs.output_root", cfg.drugs.output_root if cfg.drugs else None)],
        "tokenize": [("huggingface.output_root", hf.output_root if hf else None), merged, export],
        "mds": [export],
        "verify": [merged, export],
        "report": [merged],
        "download": [(f"{source}.output_root", section.output_root if section else None)],
    }
    chosen = [r for rs in roots.values() for r in rs] if stage == "run" else roots[stage]
    return [(k, r) for k, r in chosen if r]


def mds_publisher(mds: MdsConfig) -> Publisher:
    """Where MDS output goes; a URL `out_root` is staged locally and uploaded file by file."""
    staging = mds.staging_dir or str(Path(tempfile.gettempdir()) / "cellcorpus-mds" / config_hash(mds.out_root))
    return Publisher(mds.out_root, staging)


def mds_units_dir(mds: MdsConfig) -> Path:
    """MDS completion records (beside the export, so a moved export keeps them)."""
    return mds_publisher(mds).local_dir / ".units"


def drugs_manifest(dc: DrugsConfig) -> str:
    """Path of the drugs stage's manifest."""
    return join(dc.output_root, _DRUGS_MANIFEST)
