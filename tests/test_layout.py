"""The house rules of docs/architecture.md, checked on the source: imports point down the
floors only, and no two packages import each other."""

from __future__ import annotations

import ast
import os

from conftest import REPO

# top to bottom; a unit is a top-level module or package of pyramid_jax (models.<name> for models)
FLOORS = [
    {"cli", "generate", "serve", "export", "classify_tool"},  # programs (and their python -m doors)
    {"batch", "studio", "lowering", "training", "metrics"},  # program libraries
    {"pipeline", "text", "video", "init_frames", "spec", "config"},  # pipeline
    {"heads"},  # head typing: offline (calibration) and online (the pipeline's cache.head_map=online)
    {"sampling"},
    {"weights"},
    {"models.wan", "models.umt5", "models.vae", "models.taehv", "models.named", "models.table", "models.convs",
     "cache"},
    {"attention"},
    {"rope", "sharding", "errors", "logs", "media", "compile_cache", "data"},  # shared
]
FLOOR = {unit: i for i, units in enumerate(FLOORS) for unit in units}


def unit_of(module: str) -> str:
    parts = module.split(".")[1:]
    return ".".join(parts[:2]) if parts[0] == "models" else parts[0]


def imports():
    """(importing unit, imported unit, file) for every pyramid_jax import in the package; the
    `python -m` door inside batch/ (__main__.py) is a program, not the library."""
    root = os.path.join(REPO, "pyramid_jax")
    for folder, _, files in os.walk(root):
        for name in files:
            if not name.endswith(".py") or name == "__main__.py" or (folder == root and name == "__init__.py"):
                continue
            path = os.path.join(folder, name)
            module = os.path.relpath(path, REPO)[:-3].replace(os.sep, ".").removesuffix(".__init__")
            for node in ast.walk(ast.parse(open(path).read())):
                if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pyramid_jax"):
                    targets = ([f"{node.module}.{a.name}" for a in node.names]
                               if node.module in ("pyramid_jax", "pyramid_jax.models") else [node.module])
                elif isinstance(node, ast.Import):
                    targets = [a.name for a in node.names if a.name.startswith("pyramid_jax.")]
                else:
                    continue
                for target in targets:
                    if unit_of(target) != unit_of(module):
                        yield unit_of(module), unit_of(target), os.path.relpath(path, REPO)


def test_every_unit_has_a_floor():
    units = {u for pair in imports() for u in pair[:2]}
    assert units <= set(FLOOR), sorted(units - set(FLOOR))


def test_imports_point_down():
    up = sorted({(path, dst) for src, dst, path in imports() if FLOOR[dst] < FLOOR[src]})
    assert not up, up


def test_no_two_packages_import_each_other():
    edges = {}
    for src, dst, _ in imports():
        edges.setdefault(src, set()).add(dst)

    def reaches(a, b, seen=()):
        return any(n == b or (n not in seen and reaches(n, b, (*seen, n))) for n in edges.get(a, ()))

    cycles = sorted({tuple(sorted((a, b))) for a in edges for b in edges[a] if reaches(b, a)})
    assert not cycles, cycles
