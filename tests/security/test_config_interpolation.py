"""Config interpolation copies no secrets and imports nothing (issue 20 item 4).

`${oc.env:NAME}` is allowed (paths from the environment); its value never reaches an output, which records
the reference instead. Every other OmegaConf resolver is refused by name before anything resolves.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from cellcorpus.cli import app
from tests._utils import base_config, random_corpus

runner = CliRunner()
SECRET = "AKIAxSECRETx9f8e7d6c5b4a"


def _write(root: Path, cfg: dict) -> str:
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def test_env_values_are_never_written_into_outputs(tmp_path, monkeypatch):
    random_corpus(tmp_path, n_cells=80, seed=2)
    monkeypatch.setenv("CELLCORPUS_TEST_SECRET", SECRET)
    monkeypatch.setenv("CELLCORPUS_TEST_ROOT", str(tmp_path))
    cfg = base_config(tmp_path)
    cfg["huggingface"]["dataset_name"] = "${oc.env:CELLCORPUS_TEST_SECRET}"
    cfg["huggingface"]["merged_dataset_root"] = "${oc.env:CELLCORPUS_TEST_ROOT}/merged"
    cfg["mds"]["root_dir"] = "${huggingface.merged_dataset_root}"  # env-derived through a reference
    monkeypatch.setenv("CELLCORPUS_TEST_CLS", "<cls>")
    cfg["huggingface"]["cls_token"] = "${oc.env:CELLCORPUS_TEST_CLS}"  # a setting, recorded in the manifest
    path = _write(tmp_path, cfg)
    for command in ("tokenize", "mds", "verify", "report"):
        result = runner.invoke(app, [command, path])
        assert result.exit_code == 0, result.output
    written = [p for p in tmp_path.rglob("*") if p.is_file() and p.name != "config.yaml"]
    assert any(p.name == "report.html" for p in written) and any(p.name == "stats.json" for p in written)
    leaks = [str(p) for p in written if SECRET.encode() in p.read_bytes()]
    assert leaks == []
    manifest = (tmp_path / "merged" / "manifest.json").read_text()
    assert '"dataset_name": "${oc.env:CELLCORPUS_TEST_SECRET}"' in manifest
    assert '"cls_token": "${oc.env:CELLCORPUS_TEST_CLS}"' in manifest  # the reference, not the value
    mds_manifest = (tmp_path / "mds" / "manifest.json").read_text()
    assert '"source_manifest": "${huggingface.merged_dataset_root}/manifest.json"' in mds_manifest


@pytest.mark.parametrize(
    "value, resolver",
    [("${oc.coerce:this.s,1}", "oc.coerce"), ("${oc.create:{a: 1}}", "oc.create"), ("x${oc.decode:'1'}", "oc.decode")],
)
def test_other_resolvers_are_refused_by_name(tmp_path, value, resolver):
    sys.modules.pop("this", None)
    cfg = base_config(tmp_path)
    cfg["huggingface"]["dataset_name"] = value
    result = runner.invoke(app, ["tokenize", _write(tmp_path, cfg)])
    assert result.exit_code == 2, result.output
    assert f"huggingface.dataset_name: the resolver '{resolver}' is not allowed" in result.output
    assert "this" not in sys.modules  # oc.coerce would have imported the module it names


def test_set_override_with_a_resolver_is_refused(tmp_path):
    cfg = base_config(tmp_path)
    result = runner.invoke(
        app, ["tokenize", _write(tmp_path, cfg), "--set", "huggingface.dataset_name=${oc.coerce:this.s,1}"]
    )
    assert result.exit_code == 2 and "the resolver 'oc.coerce' is not allowed" in result.output, result.output
