"""The package keeps the shape the README's module map describes: stages are siblings, functions
fit on a screen. These read the source, so a change that breaks the shape fails here."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "captioner"
# The stages' modules: only the CLI (and the package's own API) may bring several together.
STAGES = {
    "captioner.training.train",
    "captioner.inference.evaluate",
    "captioner.inference.caption",
    "captioner.training.scst",
    "captioner.training.encoder_finetune",
}
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
        if name not in ("captioner.cli", "captioner")
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
