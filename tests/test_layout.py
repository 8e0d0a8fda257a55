"""The package keeps the shape the README's module map describes: stages are siblings, functions
fit on a screen. These read the source, so a change that breaks the shape fails here."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "captioner"
# The stages' modules, one per command: only the CLI brings several together.
STAGES = {
    "captioner.features.extract",
    "captioner.training.train",
    "captioner.training.scst",
    "captioner.training.encoder_finetune",
    "captioner.inference.caption",
    "captioner.inference.evaluate",
    "captioner.serving.app",
    "captioner.export.export",
    "captioner.info",
}
# The rooms, bottom up: a room may use the ground (config, errors, files, locks, metrics, quiet)
# and the rooms listed for it, never a room above it or beside it. cli.py and the package's own
# __init__ (the Python API's entry) stand on top and may use any.
ROOMS_BELOW = {
    "data": set(),
    "features": {"data"},
    "model": {"data", "features"},
    "training": {"data", "features", "model"},
    "inference": {"data", "features", "model", "runtime"},
    "serving": {"data", "features", "model", "inference"},
    "export": {"data", "features", "model"},
    # The exported captioner's light runtime: NumPy and onnxruntime, no model code, no TF.
    "runtime": {"data"},
}
GROUND = {"version", "config", "errors", "files", "locks", "metrics", "quiet"}
MAX_FUNCTION_LINES = 60


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        yield name.removesuffix(".__init__"), ast.parse(path.read_text(encoding="utf-8"))


def _imports(tree) -> set[str]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def test_no_stage_imports_another_stage():
    offenders = [
        f"{name} imports {target}"
        for name, tree in _modules()
        if name not in ("captioner.cli", "captioner", "captioner.__main__")
        for target in sorted(_imports(tree) & STAGES)
        if target != name
    ]
    assert offenders == []


def test_no_function_is_longer_than_a_screen():
    long = [
        f"{name}.{node.name}: {node.end_lineno - node.lineno + 1} lines"
        for name, tree in _modules()
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert long == []


def _room(module: str) -> str:
    return module.split(".")[1] if module.count(".") else ""


def test_rooms_use_only_the_ground_and_the_rooms_below_them():
    offenders = [
        f"{name} imports {target}"
        for name, tree in _modules()
        if _room(name) in ROOMS_BELOW
        for target in sorted(_imports(tree))
        if target.startswith("captioner.")
        and _room(target) not in {_room(name), *ROOMS_BELOW[_room(name)], *GROUND}
    ]
    assert offenders == []


def test_every_room_is_known():
    rooms = {path.name for path in PACKAGE.iterdir() if (path / "__init__.py").is_file()}
    assert rooms == set(ROOMS_BELOW)
