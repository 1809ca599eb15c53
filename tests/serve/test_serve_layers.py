"""predict/ (L3) and serve/ (L4) import only what their layer allows (read from the sources)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "ctcovid"
FORBIDDEN = {
    "predict": ("ctcovid.serve", "ctcovid.cli", "ctcovid.train", "ctcovid.evaluate"),
    "serve": ("ctcovid.train", "ctcovid.cli", "ctcovid.evaluate"),
}


def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_does_not_import_a_higher_layer(package: str) -> None:
    bad = [
        f"{f.name}: {name}"
        for f in sorted((SRC / package).glob("*.py"))
        for name in _imports(f)
        if name.startswith(FORBIDDEN[package])
    ]
    assert not bad, bad
