"""The package's folders are its layers (docs/architecture.md): the import rules hold on the
package's own source, and the checker finds a circle or a rule-breaking import when one is added."""
import subprocess
import sys
from pathlib import Path

import pytest

from import_rules import LAYERS, circles, violations

PACKAGE = Path(__file__).resolve().parents[1] / "platform" / "diffinject"


def test_no_import_breaks_a_layer_rule():
    assert violations(PACKAGE) == []


def test_no_import_circle():
    assert circles(PACKAGE) == []


def test_every_module_sits_in_a_layer_folder_and_the_folders_are_the_layers():
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert top == ["__init__.py"]
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    assert folders == set(LAYERS)
    for folder in folders:  # each says what lives there and what it may import
        assert (PACKAGE / folder / "__init__.py").read_text().startswith('"""')


def test_no_module_is_over_450_lines():
    long = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 450}
    assert long == {}


# every package (its __init__), and the modules a light process imports (results, compare, configs)
LIGHT = sorted({".".join(p.parent.relative_to(PACKAGE.parent).parts) for p in PACKAGE.rglob("__init__.py")}
               | {"diffinject.config.builder", "diffinject.config.overrides", "diffinject.tracking.client",
                  "diffinject.tracking.descriptions", "diffinject.reporting.results", "diffinject.reporting.compare",
                  "diffinject.reporting.table1"})


@pytest.mark.parametrize("module", LIGHT)
def test_importing_a_light_module_loads_no_torch(module):
    code = f"import sys, {module}; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def _package(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / "pkg" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / "pkg"


def test_the_checker_finds_a_circle_through_a_function_local_or_type_checking_import(tmp_path):
    pkg = _package(tmp_path, {"__init__.py": "", "core/__init__.py": "", "core/a.py": "from pkg.core import b\n",
                              "core/b.py": "def f():\n    from pkg.core.a import x\n"})
    assert circles(pkg) == [["pkg.core.a", "pkg.core.b"]]
    (pkg / "core/b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .a import x\n")
    assert circles(pkg) == [["pkg.core.a", "pkg.core.b"]]
    (pkg / "core/b.py").write_text("x = 1\n")
    assert circles(pkg) == []


def test_the_checker_finds_an_upward_import_ray_in_a_lower_layer_and_a_script_import(tmp_path):
    pkg = _package(tmp_path, {"__init__.py": "", "core/__init__.py": "", "cli/__init__.py": "",
                              "stages/__init__.py": "",
                              "core/a.py": "def f():\n    from pkg.cli import main\n",
                              "cli/main.py": "import pkg.core.a\n",
                              "stages/s.py": "import ray\nfrom experiments import table1\n",
                              "loose.py": ""})
    found = violations(pkg)
    assert "pkg.core.a:2 imports pkg.cli.main: core/ may not import cli/ (above it)" in found
    assert "pkg.stages.s:1 imports ray, but stages/ never imports Ray or MLflow" in found
    assert "pkg.stages.s:2 imports the script folder experiments" in found
    assert "pkg.loose: a module outside the layer folders" in found
    assert not [v for v in found if v.startswith("pkg.cli.main")]  # importing downward is the rule
