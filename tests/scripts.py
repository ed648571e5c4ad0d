"""The experiment drivers (`experiments/*.py`) and benchmarks (`bench/*.py`) loaded as modules, for
tests that call their main()."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
BENCH = Path(__file__).resolve().parents[1] / "bench"


def load_script(name: str, folder: Path = EXPERIMENTS):
    spec = importlib.util.spec_from_file_location(name, folder / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module
