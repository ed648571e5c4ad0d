"""The diffusion checkpoint the project ships for the quick run (Colored Digits, small_32).

The paper's stage 2 starts from pretrained models; the quick run likewise starts from a small
model the project trained with its own `diffinject diffusion train` command on the quick data
(README, "The shipped quick checkpoint": the exact command, its time and this hash). It is
read with the strict loader like any `--checkpoint`, after its SHA-256 is checked against
QUICK_CHECKPOINT_SHA256, so a damaged or swapped file is an error, not a silently different
table. `table1.py --quick --retrain-diffusion` trains the model instead.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import CheckpointError, ConfigError
from ..integrity import file_digest

QUICK_CHECKPOINT = Path(__file__).parent / "weights" / "colored_digits_small_32.pt"
QUICK_CHECKPOINT_SHA256 = "eee56d0f419afe89bcab589a4b8f5aed21cbfccedc409fc398f905a401fe7035"
QUICK_CHECKPOINT_DATASET = "colored_digits"


def quick_checkpoint(path: Path = QUICK_CHECKPOINT, sha256: str = QUICK_CHECKPOINT_SHA256) -> Path:
    """The shipped checkpoint's path, after checking that the file is there and has its hash."""
    if not path.is_file():
        raise CheckpointError(f"the shipped quick checkpoint {path} is missing (a partial checkout?); restore it "
                              f"with `git checkout -- {path.name}` in {path.parent}, or train one with --retrain-diffusion")
    found = file_digest(path)
    if found != sha256:
        raise CheckpointError(f"the shipped quick checkpoint {path} has SHA-256 {found}, expected {sha256}: the file "
                              f"is damaged or not the one the README documents; restore it, or train one with "
                              f"--retrain-diffusion")
    return path


def with_quick_checkpoint(checkpoints: dict[str, str], quick: bool, retrain: bool, configs=(),
                          swept=()) -> dict[str, str]:
    """--checkpoint items plus, for a quick run that neither retrains nor names its own
    Colored Digits checkpoint, the verified shipped one. `configs` (the run's configs) must then
    keep the quick preset's diffusion settings, and no swept field (`swept`, dotted names) may be
    a diffusion.* one: either would change nothing on a shipped model, so it is an error that
    says to retrain."""
    if not quick or retrain or QUICK_CHECKPOINT_DATASET in checkpoints:
        return dict(checkpoints)
    from ..config import preset

    expected = preset(QUICK_CHECKPOINT_DATASET, quick=True).diffusion
    changed = [f"a sweep of {name}" for name in swept if name.startswith("diffusion.")]
    for cfg in configs:
        if cfg.data.dataset != QUICK_CHECKPOINT_DATASET:
            continue
        changed += [f"diffusion.{name}={getattr(cfg.diffusion, name)}" for name in vars(expected)
                    if getattr(cfg.diffusion, name) != getattr(expected, name)]
    if changed:
        raise ConfigError(f"--quick starts from the shipped diffusion checkpoint, so {', '.join(dict.fromkeys(changed))} would "
                          f"change nothing; add --retrain-diffusion to train the model with these settings")
    return {**checkpoints, QUICK_CHECKPOINT_DATASET: str(quick_checkpoint())}
