"""The diffusion checkpoints the project ships for the quick run: one small_32 model per embedded
dataset (Colored MNIST 5k, the main job's; Colored Digits, the fast tests').

The paper's stage 2 starts from pretrained models; the quick run likewise starts from a small
model the project trained with its own `diffinject diffusion train` and `diffusion export`
commands on the quick data (docs/table1.md, "The shipped diffusion models": the exact commands,
their time and these hashes). It is read with the strict loader like any `--checkpoint`, after
its SHA-256 is checked against the one recorded here, so a damaged or swapped file is an error,
not a silently different table. `table1.py --quick --retrain-diffusion` trains the model instead.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from diffinject.core.errors import CheckpointError, ConfigError
from diffinject.core.integrity import file_digest

WEIGHTS = Path(__file__).parent / "weights"


@dataclass(frozen=True)
class ShippedModel:
    path: Path
    sha256: str


SHIPPED = {
    "colored_mnist_5k": ShippedModel(WEIGHTS / "colored_mnist_5k_small_32.pt",
                                     "5d778c85c5c20947b55535aca3a04e74c46dcae32728f74419c396de80ccf373"),
    "colored_digits": ShippedModel(WEIGHTS / "colored_digits_small_32.pt",
                                   "eee56d0f419afe89bcab589a4b8f5aed21cbfccedc409fc398f905a401fe7035"),
}


def verified(path: Path, sha256: str) -> Path:
    """`path`, after checking that the file is there and has the hash `sha256`."""
    if not path.is_file():
        raise CheckpointError(f"the shipped quick checkpoint {path} is missing (a partial checkout?); restore it "
                              f"with `git checkout -- {path.name}` in {path.parent}, or train one with --retrain-diffusion")
    found = file_digest(path)
    if found != sha256:
        raise CheckpointError(f"the shipped quick checkpoint {path} has SHA-256 {found}, expected {sha256}: the file "
                              f"is damaged or not the one the docs record; restore it, or train one with "
                              f"--retrain-diffusion")
    return path


def quick_checkpoint(dataset: str) -> Path:
    """The verified path of the model shipped for `dataset` (an embedded one)."""
    model = SHIPPED[dataset]
    return verified(model.path, model.sha256)


def with_quick_checkpoint(checkpoints: dict[str, str], quick: bool, retrain: bool, configs=(),
                          swept=()) -> dict[str, str]:
    """--checkpoint items plus, for a quick run that neither retrains nor names its own checkpoint
    for a dataset with a shipped model, the verified shipped one, for each such dataset of
    `configs` (the run's configs). Those configs must keep the quick preset's diffusion settings,
    and no swept field (`swept`, dotted names) may be a diffusion.* one: either would change
    nothing on a shipped model, so it is an error that says to retrain."""
    if not quick or retrain:
        return dict(checkpoints)
    from diffinject.config.builder import experiment_config

    datasets = [d for d in dict.fromkeys(cfg.data.dataset for cfg in configs) if d in SHIPPED and d not in checkpoints]
    changed = [f"a sweep of {name}" for name in swept if name.startswith("diffusion.")] if datasets else []
    for cfg in configs:
        if cfg.data.dataset not in datasets:
            continue
        expected = experiment_config(cfg.data.dataset, quick=True).diffusion
        changed += [f"diffusion.{name}={getattr(cfg.diffusion, name)}" for name in vars(expected)
                    if getattr(cfg.diffusion, name) != getattr(expected, name)]
    if changed:
        raise ConfigError(f"--quick starts from the shipped diffusion checkpoint, so {', '.join(dict.fromkeys(changed))} would "
                          f"change nothing; add --retrain-diffusion to train the model with these settings")
    return {**checkpoints, **{d: str(quick_checkpoint(d)) for d in datasets}}
