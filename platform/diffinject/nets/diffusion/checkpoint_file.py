"""Reading a checkpoint file safely: torch.load with weights_only, and one clear error for a
missing, unreadable or unsafe file (both the project's checkpoints and released ones)."""
from __future__ import annotations

import re
import warnings
from pathlib import Path

import torch

from diffinject.core.errors import CheckpointError


def read_checkpoint_file(path: Path) -> object:
    """torch.load(weights_only=True), with one clear error for a missing, unreadable or unsafe file."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a folder; expected a checkpoint file (e.g. FOLDER/diffusion.pt)")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        with warnings.catch_warnings():  # plain pickles: the error below says what the file is
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and weights_only errors all mean "not a checkpoint we can read"
        raise CheckpointError(f"checkpoint {path} {_load_failure(exc)}; expected a file written by torch.save "
                              f"(tensors, dicts, lists and numbers only)") from None


def _load_failure(exc: Exception) -> str:
    """What torch.load's error means, without its advice to load untrusted files unsafely."""
    text = str(exc)
    unsafe = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if unsafe:
        return f"holds a Python object of type {unsafe.group(1)}, which is not loaded (loading it could run code)"
    if "zip archive" in text or isinstance(exc, EOFError):
        return "is truncated or corrupted (incomplete torch.save archive)"
    return f"is unreadable ({type(exc).__name__})"
