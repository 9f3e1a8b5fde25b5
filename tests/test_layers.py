"""The layering of docs/LAYOUT.md, read from the source (ast, every import including lazy ones):
api/, serving/, registry/ and models/ never import training/; models/ is torch-level math only;
api/ is web only (the recommendation math lives in serving/)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NEVER_TRAINING = ("api", "serving", "registry", "models")
# What models/ may import besides the standard library and itself: array and model math only.
MODELS_MAY_IMPORT = {"torch", "numpy", "scipy", "implicit", "threadpoolctl"}
# What api/ never imports: array and model math, scoring. It calls serving/ for recommendations.
API_NEVER_IMPORTS = {"numpy", "torch", "scipy", "implicit", "threadpoolctl", "models"}


def imports_of(path: Path) -> set[str]:
    """Top-level names of every module `path` imports, at module level or inside functions."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def _files(package: str) -> list[Path]:
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"no Python files under {package}/"
    return files


def test_the_walker_sees_lazy_and_from_imports(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text("import os.path\nfrom . import sibling\n\ndef f():\n    from training.compare import x\n"
                      "    import mlflow as m\n")
    assert imports_of(source) == {"os", "training", "mlflow"}


@pytest.mark.parametrize("package", NEVER_TRAINING)
def test_lower_layers_never_import_training(package: str) -> None:
    offenders = [str(f.relative_to(ROOT)) for f in _files(package) if "training" in imports_of(f)]
    assert offenders == [], f"{package}/ must import models/ (or serving/), never training/: {offenders}"


def test_models_import_only_array_and_model_libraries() -> None:
    allowed = MODELS_MAY_IMPORT | set(sys.stdlib_module_names) | {"models", "__future__"}
    found = {str(f.relative_to(ROOT)): sorted(imports_of(f) - allowed) for f in _files("models")}
    assert {f: extra for f, extra in found.items() if extra} == {}


def test_api_holds_no_array_math_or_models() -> None:
    found = {str(f.relative_to(ROOT)): sorted(imports_of(f) & API_NEVER_IMPORTS) for f in _files("api")}
    assert {f: math for f, math in found.items() if math} == {}, "api/ calls serving/ for recommendations"


def _project_files() -> list[Path]:
    skip = {".venv", "var", ".git", "node_modules"}
    return [f for f in ROOT.rglob("*.py") if not skip & set(f.relative_to(ROOT).parts)]


def test_no_module_edits_sys_path() -> None:
    """Modules are found from the repository root (`python -m`, pytest, Airflow, gunicorn run there)."""
    edits = []
    for path in _project_files():
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if (isinstance(node, ast.Attribute) and node.attr in ("insert", "append", "extend")
                    and ast.unparse(node.value) == "sys.path"):
                edits.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert edits == []


def test_bench_report_needs_only_the_standard_library() -> None:
    """The GPU machines run the benchmarks without Airflow or MLflow: their shared module stays stdlib-only."""
    allowed = set(sys.stdlib_module_names) | {"__future__"}
    assert imports_of(ROOT / "bench" / "report.py") - allowed == set()
