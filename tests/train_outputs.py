"""What tests read from a training job's outputs."""
from pathlib import Path

import torch


def load_model_state(checkpoint_dir: Path) -> dict:
    """A job's final `model.pt` (weights_only)."""
    return torch.load(Path(checkpoint_dir) / "model.pt", map_location="cpu", weights_only=True)
