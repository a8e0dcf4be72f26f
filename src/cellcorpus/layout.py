"""Where every output and scratch file lives, local folder or fsspec URL: the one place that knows.

A command resolves its config's location keys once (`Layout.of`, held by the command's `Plan`); stages ask the
resolved layout instead of re-deriving paths from config sections, and no scratch sub-folder name is spelled
anywhere else. Verify and report find what tokenize and mds wrote here, not by importing those stages.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from cellcorpus.config import Config, MdsConfig, config_hash
from cellcorpus.errors import ConfigError
from cellcorpus.io.paths import Publisher, join

__all__ = [
    "SPLITS",
    "MANIFEST",
    "DRUG_PAD",
    "REPORT_DIR",
    "DEDUP_RECORD",
    "APPEND_RECORD",
    "VERIFY_RECORD",
    "OUTPUT_RECORDS",
    "Layout",
    "mds_publisher",
]

SPLITS = ("train", "valid")  # the seed's split names: <merged_dataset_root>/<split>.dataset
MANIFEST = "manifest.json"  # beside each stage's output, written last
REPORT_DIR = "report"  # under merged_dataset_root
VERIFY_RECORD = "verify.json"  # in REPORT_DIR: the last verify's checks, shown by the report
DEDUP_RECORD = "dedup.json"  # in REPORT_DIR: what the last `cellcorpus dedup` found, shown by the report
APPEND_RECORD = "append.json"  # beside the tokenize manifest while an `--append` is under way (removed after)
DRUG_PAD = "<pad>"  # drug_to_id's padding key (id 0, fingerprint row 0)
_DRUGS_MANIFEST = "drugs_manifest.json"
# Names an earlier cellcorpus run leaves in an output root: a folder holding one of them is ours to adopt.
OUTPUT_RECORDS = (MANIFEST, ".units", REPORT_DIR)
_SOURCES = ("cellxgene", "scbasecamp", "tahoe")  # download sections, each with its own output_root


@dataclass(frozen=True)
class Layout:
    """Every folder one config reads or writes, resolved once; None where the config has no such section."""

    work: Path | None = None  # huggingface.output_root: tokenize's local scratch
    merged: Publisher | None = None  # huggingface.merged_dataset_root (a URL: staged under work/staging)
    mds: Publisher | None = None  # mds.out_root (a URL: staged in mds.staging_dir or a temp folder)
    mds_source: Publisher | None = None  # mds.root_dir: the datasets the mds stage exports
    vocab_root: str | None = None
    drugs_root: str | None = None
    stats_root: str | None = None
    downloads: tuple[tuple[str, str], ...] = ()  # (source section, its output_root)

    @classmethod
    def of(cls, cfg: Config) -> Layout:
        """The layout of `cfg` (paths as the config spells them; nothing is created or checked here)."""
        hf, mds = cfg.huggingface, cfg.mds
        work = Path(hf.output_root) if hf else None
        return cls(
            work=work,
            merged=Publisher(hf.merged_dataset_root, work / "staging") if hf and work else None,
            mds=mds_publisher(mds) if mds else None,
            mds_source=Publisher(mds.root_dir, staging=".") if mds else None,
            vocab_root=cfg.vocab.output_root if cfg.vocab else None,
            drugs_root=cfg.drugs.output_root if cfg.drugs else None,
            stats_root=cfg.stats.output_root if cfg.stats else None,
            downloads=tuple((s, root) for s in _SOURCES if (root := getattr(getattr(cfg, s), "output_root", None))),
        )

    # ---- tokenize (huggingface) -----------------------------------------------------------------------
    def merged_root(self) -> Publisher:
        """The merged datasets' root (`huggingface` required)."""
        if self.merged is None:
            raise _missing("huggingface")
        return self.merged

    def _work(self) -> Path:
        if self.work is None:
            raise _missing("huggingface")
        return self.work

    def dataset_dir(self, split: str) -> Path:
        """The local folder a split is written into (the final folder, or its staging copy for a URL root)."""
        return self.merged_root().local_dir / f"{split}.dataset"

    @property
    def parts(self) -> Path:
        """Tokenize units' Arrow parts, per split (removed once the datasets are written)."""
        return self._work() / "parts"

    def units(self, ledger: str | None = None) -> Path:
        """Completion records of tokenize (`tokenize`) and of its shuffle (`shuffle-<split>`)."""
        root = self._work() / "units"
        return root / ledger if ledger else root

    @property
    def decompressed(self) -> Path:
        """`.h5ad.gz` inputs decompressed once (h5py cannot read gzip streams)."""
        return self._work() / "decompressed"

    @property
    def joins(self) -> Path:
        """On-disk indexes of join tables too large to load in every worker (io/join_index.py)."""
        return self._work() / "joins"

    def scratch_dirs(self) -> dict[str, Path]:
        """Tokenize's scratch folders under `huggingface.output_root` (claimed before use, removed only if ours)."""
        work = self._work()
        return {name: work / name for name in ("parts", "units", "decompressed", "staging", "joins")}

    # ---- mds and drugs ---------------------------------------------------------------------------------
    @property
    def mds_units(self) -> Path:
        """MDS completion records (beside the export, so a moved export keeps them)."""
        if self.mds is None:
            raise _missing("mds")
        return self.mds.local_dir / ".units"

    @property
    def drugs_manifest(self) -> str:
        """Path of the drugs stage's manifest."""
        if self.drugs_root is None:
            raise _missing("drugs")
        return join(self.drugs_root, _DRUGS_MANIFEST)

    # ---- locks ----------------------------------------------------------------------------------------
    def write_roots(self, stage: str, source: str | None = None) -> list[tuple[str, str]]:
        """(config key, local folder) of every root `stage` writes (the ones its lock covers); `run`: all."""
        merged = ("huggingface.merged_dataset_root", str(self.merged.local_dir) if self.merged else None)
        export = ("mds.out_root", str(self.mds.local_dir) if self.mds else None)
        downloads = dict(self.downloads)
        roots = {
            "vocab": [("vocab.output_root", self.vocab_root)],
            "drugs": [("drugs.output_root", self.drugs_root)],
            "stats": [("stats.output_root", self.stats_root)],
            "tokenize": [("huggingface.output_root", str(self.work) if self.work else None), merged, export],
            "mds": [export],
            "verify": [merged, export],
            "report": [merged],
            "download": [(f"{source}.output_root", downloads.get(source or ""))],
        }
        chosen = [r for rs in roots.values() for r in rs] if stage == "run" else roots[stage]
        return [(k, r) for k, r in chosen if r]


def _missing(section: str) -> ConfigError:
    return ConfigError(f"{section}: section missing from the config (needed by this stage)")  # as Config.need


def mds_publisher(mds: MdsConfig) -> Publisher:
    """Where MDS output goes; a URL `out_root` is staged locally and uploaded file by file."""
    staging = mds.staging_dir or str(Path(tempfile.gettempdir()) / "cellcorpus-mds" / config_hash(mds.out_root))
    return Publisher(mds.out_root, staging)
