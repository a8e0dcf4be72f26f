"""A download never writes outside its folder (issue 20 item 2).

An HTTP mirror's listing links `../../evil.h5ad` (fsspec keeps the `..` in the listed path); object-store keys
may hold `..` too; and a symlink inside the cache may point elsewhere. Each is refused before any byte is
fetched, naming the entry, with exit 1 and nothing written outside the cache.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from cellcorpus.cli import app
from cellcorpus.errors import InputError
from cellcorpus.sources.remote import safe_destination
from tests._release import http_server

runner = CliRunner()


def _config(tmp_path: Path, url: str) -> str:
    path = tmp_path / "download.yaml"
    path.write_text(yaml.safe_dump({"tahoe": {"url": url, "output_root": str(tmp_path / "out"), "num_proc": 1}}))
    return str(path)


def _files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() or p.is_symlink()}


def test_http_listing_with_dotdot_is_refused_before_any_fetch(tmp_path):
    served = tmp_path / "srv"
    (served / "mirror").mkdir(parents=True)
    (served / "mirror" / "ok.h5ad").write_bytes(b"ok")
    (served / "evil.h5ad").write_bytes(b"evil")
    (served / "mirror" / "index.html").write_text('<a href="ok.h5ad">ok</a> <a href="../../evil.h5ad">x</a>')
    before = _files(tmp_path)
    with http_server(served) as base:
        result = runner.invoke(app, ["download", "tahoe", _config(tmp_path, f"{base}/mirror")])
    assert result.exit_code == 1, result.output
    assert "mirror/../../evil.h5ad: remote name '../../evil.h5ad' would be written outside" in result.output
    assert "refused, nothing fetched" in result.output
    assert _files(tmp_path) - before == {"download.yaml"}  # nothing fetched, not even ok.h5ad


def test_symlink_in_the_cache_is_refused(tmp_path):
    bucket = tmp_path / "bucket" / "sub"
    bucket.mkdir(parents=True)
    (bucket / "a.h5ad").write_bytes(b"data")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    cache = tmp_path / "out" / "h5ad"
    cache.mkdir(parents=True)
    (cache / "sub").symlink_to(elsewhere)
    result = runner.invoke(app, ["download", "tahoe", _config(tmp_path, f"file://{tmp_path}/bucket")])
    assert result.exit_code == 1, result.output
    assert "leads outside" in result.output and "through a symlink" in result.output
    assert not list(elsewhere.iterdir())


@pytest.mark.parametrize("rel", ["../x.h5ad", "a/../../x.h5ad", "/etc/x.h5ad", "a//b.h5ad", "", ".."])
def test_escaping_names_are_refused(tmp_path, rel):
    with pytest.raises(InputError, match="refused, nothing fetched"):
        safe_destination(tmp_path / "cache", rel, f"s3://bucket/{rel}")


def test_plain_names_are_kept(tmp_path):
    assert safe_destination(tmp_path, "a/b.h5ad", "x") == tmp_path / "a" / "b.h5ad"
