"""``import ctcovid.models`` loads torch and nothing heavier."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import ctcovid.models

HEAVY = ("monai", "scipy", "matplotlib", "torchvision", "pandas", "sklearn")


def test_import_pulls_in_no_heavy_dependency() -> None:
    code = f"import sys, ctcovid.models\nprint(','.join(m for m in {HEAVY!r} if m in sys.modules))\n"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert result.stdout.strip() == ""


def test_models_sources_import_only_stdlib_torch_and_themselves() -> None:
    allowed_third_party = {"torch"}
    package = Path(ctcovid.models.__file__).parent
    offenders = []
    for path in sorted(package.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                ok = (
                    name.startswith("ctcovid.models")
                    or top in allowed_third_party
                    or (top in sys.stdlib_module_names and top != "ctcovid")
                )
                if not ok:
                    offenders.append(f"{path.name}: {name}")
    assert not offenders, offenders
