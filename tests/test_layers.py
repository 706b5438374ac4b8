"""The layers of service/ (ARCHITECTURE.md): imports only go down, and no two modules or packages
import each other. The allowed directions are written once, in pyproject.toml [tool.importlinter];
these tests run those contracts on the real package, and on a copy with one bad import added, so
that a contract which stopped catching anything would fail here too."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    """import-linter over the `service` package found in `root`, with the contracts of `root`."""
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); "
        "from importlinter.cli import lint_imports; "
        "sys.exit(lint_imports(config_filename=sys.argv[1] + '/pyproject.toml', no_cache=True))"
    )
    # -I: the copy's `service`, not the one the venv's .pth puts on the path
    return subprocess.run([sys.executable, "-I", "-c", code, str(root)], cwd=root,
                          capture_output=True, text=True, timeout=120)


def _copy_with(tmp_path: Path, module: str, line: str) -> Path:
    shutil.copytree(ROOT / "service", tmp_path / "service", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    target = tmp_path / "service" / module
    target.write_text(target.read_text() + f"\n{line}\n")
    return tmp_path


def test_the_service_keeps_its_layers_and_has_no_cycles():
    proc = _lint_imports(ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Contracts: 2 kept, 0 broken." in proc.stdout


def test_an_import_up_a_layer_breaks_the_contract(tmp_path):
    # The knowledge must not know the interfaces that serve it.
    root = _copy_with(tmp_path, "knowledge/model.py", "from service.api import routes  # noqa")
    proc = _lint_imports(root)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "service.knowledge is not allowed to import service.api" in proc.stdout


def test_the_two_interfaces_stay_independent(tmp_path):
    root = _copy_with(tmp_path, "ehr/cds_hooks.py", "from service.api.routes import bp  # noqa")
    proc = _lint_imports(root)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "service.ehr is not allowed to import service.api" in proc.stdout


def test_a_cycle_inside_a_layer_breaks_the_contract(tmp_path):
    # The cycle issue 17 removed: ask_next and the evaluation importing each other.
    root = _copy_with(tmp_path, "reasoning/ask_next.py", "from service.reasoning.evaluation import Evaluator  # noqa")
    proc = _lint_imports(root)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "no import cycles" in proc.stdout and "BROKEN" in proc.stdout
    assert "in service.reasoning." in proc.stdout and ".evaluation -> .ask_next" in proc.stdout


def test_a_new_flat_module_must_be_given_a_layer(tmp_path):
    root = _copy_with(tmp_path, "errors.py", "")
    (root / "service" / "helpers.py").write_text('"""A module dropped flat into service/."""\n')
    proc = _lint_imports(root)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "service.helpers" in proc.stdout
