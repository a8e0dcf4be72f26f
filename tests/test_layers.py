"""The house's import graph: no cycles, no import from a lower layer to a higher one, no stage importing another.

Layers (lower first): errors/_version <- core <- io, config, manifest, log <- layout, formats <- sources <- exec,
plan <- stages <- pipeline, demo <- cli. Stage modules share only `stages.base` and `stages.preflight`;
`stages.tokenize_finalize` is tokenize's second half and `stages.mds_unit` the mds stage's (the fused pass
feeds it through `stages.base.FusedExport`, wired by the pipeline).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).parents[1] / "src" / "cellcorpus"
LAYER = {
    "_version": 0, "errors": 0, "core": 1, "io": 2, "config": 2, "manifest": 2, "log": 2, "layout": 3,
    "config_reference": 3, "formats": 3, "encodings": 4, "sources": 4, "exec": 5, "plan": 5, "stages": 6,
    "pipeline": 7, "demo": 7, "api": 7, "cli": 8, "__main__": 8, "__init__": 9,
}  # fmt: skip
SHARED_STAGE_MODULES = {"cellcorpus.stages.base", "cellcorpus.stages.preflight"}
# a stage's own second module (no stage imports another stage's: the fused pass reaches the MDS side only
# through the `stages.base.FusedExport` protocol, given by the pipeline)
STAGE_OF = {
    "tokenize_finalize": "tokenize",
    "tokenize_keys": "tokenize",
    "tokenize_append": "tokenize",
    "tokenize_dedup": "tokenize",
    "mds_unit": "mds",
}


def _graph() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT).with_suffix("")
        name = ".".join(("cellcorpus", *rel.parts)).removesuffix(".__init__")
        deps = edges.setdefault(name, set())
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("cellcorpus"):
                deps.add(node.module)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name.startswith("cellcorpus"))
    return edges


def _layer(module: str) -> int:
    parts = module.split(".")
    return LAYER[parts[1] if len(parts) > 1 else "__init__"]


def test_no_import_runs_up_a_layer():
    upward = sorted(f"{a} -> {b}" for a, deps in _graph().items() for b in deps if _layer(b) > _layer(a))
    assert upward == []


def test_no_stage_imports_another_stage():
    crossing = []
    for a, deps in _graph().items():
        for b in deps:
            if (
                a.startswith("cellcorpus.stages.")
                and b.startswith("cellcorpus.stages.")
                and b not in SHARED_STAGE_MODULES
            ):
                stage_a, stage_b = (STAGE_OF.get(m.split(".")[-1], m.split(".")[-1]) for m in (a, b))
                if stage_a != stage_b:
                    crossing.append(f"{a} -> {b}")
    assert crossing == []


def test_no_import_cycles():
    graph = _graph()
    cycles = []

    def visit(node: str, stack: list[str], seen: set[str]) -> None:
        for dep in graph.get(node, ()):
            if dep in stack:
                cycles.append(" -> ".join([*stack[stack.index(dep) :], dep]))
            elif dep not in seen:
                seen.add(dep)
                visit(dep, [*stack, dep], seen)

    for start in graph:
        visit(start, [start], {start})
    assert cycles == []
