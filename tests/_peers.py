"""The peers' own code, as test-only references: a module file loaded from its project's wheel on PyPI.

The wheels (helical for Geneformer's tokenizer, scgpt) pull heavy dependencies (CUDA torch, torchtext) that do
not install beside this project's, so only the one module a test compares against is loaded, with the imports
it needs already present. A wheel is looked for in $CELLCORPUS_PEER_WHEELS (CI downloads them there), else
downloaded from PyPI without dependencies; a test skips, naming the wheel, where neither works (offline).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from types import ModuleType

import pytest

CACHE = Path(os.environ.get("CELLCORPUS_PEER_WHEELS", Path(__file__).parents[1] / ".peer-wheels"))


def peer_wheel(requirement: str) -> Path:
    """The wheel of `requirement` (`name==version`), downloaded once into CACHE."""
    name, _, version = requirement.partition("==")
    found = sorted(CACHE.glob(f"{name.replace('-', '_')}-{version}-*.whl"))
    if not found:
        CACHE.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(CACHE), requirement]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        found = sorted(CACHE.glob(f"{name.replace('-', '_')}-{version}-*.whl"))
        if done.returncode or not found:
            pytest.skip(f"the reference wheel {requirement} is not available here: {done.stderr.strip()[-200:]}")
    return found[0]


def peer_module(requirement: str, member: str, folder: Path) -> ModuleType:
    """Module file `member` of the wheel, extracted into `folder` and imported on its own."""
    with zipfile.ZipFile(peer_wheel(requirement)) as z:
        z.extract(member, folder)
    name = "peer_" + member.replace("/", "_").removesuffix(".py")
    spec = importlib.util.spec_from_file_location(name, folder / member)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def peer_definitions(requirement: str, member: str, names: tuple[str, ...], namespace: dict) -> dict:
    """The top-level functions and classes `names` of the wheel's module file `member`, compiled alone into
    `namespace` (which supplies the globals they use): for a module whose own imports cannot load here (scGPT's
    tokenizer imports torchtext, which has no release for current torch)."""
    import ast

    with zipfile.ZipFile(peer_wheel(requirement)) as z:
        source = z.read(member).decode()
    tree = ast.parse(source)
    wanted = [n for n in tree.body if isinstance(n, ast.FunctionDef | ast.ClassDef) and n.name in names]
    missing = set(names) - {n.name for n in wanted}
    assert not missing, f"{member} of {requirement} has no {sorted(missing)}"
    exec(compile(ast.Module(body=wanted, type_ignores=[]), f"{requirement}/{member}", "exec"), namespace)
    return {name: namespace[name] for name in names}
