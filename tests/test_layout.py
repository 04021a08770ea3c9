"""The shape of the house: stage packages whose imports run down the data flow only."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from conftest import PROJECT

PACKAGE = PROJECT / "vistumor"
#: stages in data-flow order; a module may import its own stage and earlier ones only.
#: Shared vocabulary and plumbing come first; ``tasks`` and the entry shims sit on top.
FLOW = [
    ("errors", "files", "labels", "config", "stats", "runner"),
    ("wsi",),  # slide and annotation files: the formats the synthetic generator writes
    ("synthetic",),
    ("tiling",),
    ("data",),
    ("model",),
    ("explain",),
    ("infer",),
    ("evaluate",),
    ("viewer",),
    ("runs",),
    ("tasks", "cli", "compare"),
]
RANK = {name: i for i, names in enumerate(FLOW) for name in names}


def stage_of(module: str) -> str:
    """``vistumor.tiling.jobs`` -> ``tiling``."""
    return module.split(".")[1] if module.count(".") else module


def vistumor_imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every ``vistumor`` import in a file (``from vistumor import x`` as
    ``vistumor.x``)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "vistumor":
                found += [(node.lineno, f"vistumor.{a.name}") for a in node.names if a.name != "__version__"]
            elif node.module.startswith("vistumor."):
                found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("vistumor.")]
    return found


def modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if p.name != "__init__.py" or p.parent != PACKAGE)


def test_every_package_is_a_known_stage():
    packages = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    top_modules = {p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    assert packages | top_modules <= set(RANK), f"unplaced: {sorted((packages | top_modules) - set(RANK))}"


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_run_down_the_flow(path):
    here = stage_of(".".join(("vistumor", *path.relative_to(PACKAGE).with_suffix("").parts)))
    upward = [f"line {line}: {module}" for line, module in vistumor_imports(path)
              if RANK[stage_of(module)] > RANK[here]]
    assert not upward, f"{path.relative_to(PROJECT)} ({here}) imports later stages: {upward}"


def test_the_check_sees_a_back_edge(tmp_path):
    """The audit itself can fail: a tiling module importing the model stage is caught."""
    bad = tmp_path / "bad.py"
    bad.write_text("from vistumor.model.classifier import PatchClassifier\nfrom vistumor import labels\n")
    found = vistumor_imports(bad)
    assert found == [(1, "vistumor.model.classifier"), (2, "vistumor.labels")]
    assert RANK[stage_of(found[0][1])] > RANK["tiling"]


def public_names(path: Path) -> list[str]:
    """The public names a module defines at its top level (functions, classes, constants)."""
    names = []
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.append(node.name)
        elif isinstance(node, ast.Assign):
            names += [t.id for t in node.targets if isinstance(t, ast.Name)]
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.append(node.target.id)
    return [n for n in names if not n.startswith("_") and n not in ("main", "log", "logger")]


def defined_twice(paths: list[Path], root: Path = PROJECT) -> dict[str, list[str]]:
    where: dict[str, list[str]] = {}
    for path in paths:
        for name in public_names(path):
            where.setdefault(name, []).append(str(path.relative_to(root)))
    return {name: places for name, places in sorted(where.items()) if len(places) > 1}


def test_each_public_name_is_defined_once():
    """One name, one thing: a public name means the same everywhere in the package."""
    twice = defined_twice(modules())
    assert not twice, f"public names defined in more than one module: {twice}"


def test_the_name_check_sees_a_name_defined_twice(tmp_path):
    (tmp_path / "a.py").write_text("STAGES = ('train',)\ndef merge():\n    pass\n_private = 1\n")
    (tmp_path / "b.py").write_text("STAGES = ('tile', 'merge')\nclass Other:\n    pass\n_private = 2\n")
    paths = [tmp_path / "a.py", tmp_path / "b.py"]
    assert {n: len(p) for n, p in defined_twice(paths, tmp_path).items()} == {"STAGES": 2}

