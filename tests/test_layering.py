"""The layering of shared/STYLE.md holds: a lower layer never imports a higher one (parsed with ast)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from repo_paths import REPO_ROOT

PKG = REPO_ROOT / "src" / "ctcovid"
LAYER = {
    "types": 0,
    "config": 0,
    "errors": 0,
    "io": 1,
    "preprocess": 1,
    "models": 1,
    "metrics": 1,
    "data": 2,
    "synth": 2,
    "checkpoint": 2,
    "train": 3,
    "predict": 3,
    "evaluate": 3.5,
    "serve": 4,
    "cli": 4,
    "__main__": 4,
}


def _unit(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "ctcovid" and parts[1] in LAYER else None


def _imports(path: Path) -> list[tuple[int, str]]:
    mod = ".".join(("ctcovid", *path.relative_to(PKG).with_suffix("").parts))
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = mod.split(".")[
                    : len(mod.split(".")) - node.level + (1 if path.name == "__init__.py" else 0)
                ]
                out.append((node.lineno, ".".join(base + ([node.module] if node.module else []))))
            elif node.module:
                out.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
    return out


def test_no_module_imports_a_higher_layer() -> None:
    bad = []
    for f in sorted(PKG.rglob("*.py")):
        me = _unit(".".join(("ctcovid", *f.relative_to(PKG).with_suffix("").parts)))
        for line, target in _imports(f):
            other = _unit(target)
            if me and other and me != other and LAYER[other] > LAYER[me]:
                bad.append(f"{f.relative_to(REPO_ROOT)}:{line} ({me}) imports {target} ({other})")
            if me == "models" and target.startswith("ctcovid.") and other != "models":
                bad.append(f"{f.relative_to(REPO_ROOT)}:{line}: models must import only torch and itself")
            if me == "serve" and other == "train":
                bad.append(f"{f.relative_to(REPO_ROOT)}:{line}: serve must not import train")
    assert not bad, "\n".join(bad)


def test_library_code_never_prints() -> None:
    prints = []
    for f in sorted(PKG.rglob("*.py")):
        if f.relative_to(PKG).parts[0] in ("cli", "__main__.py"):
            continue
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "print":
                prints.append(f"{f.relative_to(REPO_ROOT)}:{node.lineno}")
    assert not prints, prints


def test_import_ctcovid_is_light() -> None:
    code = (
        "import sys, ctcovid; heavy = [m for m in ('torch', 'fastapi', 'matplotlib', 'scipy', 'pydicom') "
        "if m in sys.modules]; print(','.join(heavy))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == ""


def test_no_two_modules_of_evaluate_import_each_other() -> None:
    """sweep.py runs the tables; tables.py takes plain rows and must not import sweep back (issue 17)."""
    graph: dict[str, set[str]] = {}
    for f in sorted((PKG / "evaluate").glob("*.py")):
        mod = "ctcovid.evaluate." + f.stem
        graph[mod] = {t for _, t in _imports(f) if t.startswith("ctcovid.evaluate.") and t != mod}
    pairs = sorted((a, b) for a, deps in graph.items() for b in deps if a in graph.get(b, set()) and a < b)
    assert pairs == [], f"circular imports: {pairs}"


def test_data_holds_real_datasets_only_and_never_imports_synth() -> None:
    """The synthetic cohort is its own package (issue 17); data/ is datasets, manifests, caches."""
    offenders = [
        f"{f.relative_to(PKG)}:{line} imports {target}"
        for f in sorted((PKG / "data").rglob("*.py"))
        for line, target in _imports(f)
        if target == "ctcovid.synth" or target.startswith("ctcovid.synth.")
    ]
    assert offenders == []
    assert not any(
        (PKG / "data" / f"{m}.py").exists() for m in ("phantom", "lesions", "synthetic", "synth_scan")
    )
