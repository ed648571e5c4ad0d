"""The GAN checkpoints the project ships for the quick run's generative baselines, on the main
job's embedded data (Colored MNIST 5k): A²'s source StyleGAN2 and AmpliBias's per-class FastGAN
starting points.

The references start A² from a StyleGAN2 trained for days and AmpliBias from FastGANs trained
for 50,000 steps per class; at CPU scale neither fits the main job's budget, so the quick run
starts from generators the project trained with its own `diffinject gan train` command on the
quick data (docs/table1.md, "The shipped GAN checkpoints": the commands, their time and these
hashes) and only adapts, projects, fine-tunes and samples in the run. A config names one with
`stylegan2.source_checkpoint` / `fastgan.init_checkpoint`: "" trains in the run, "shipped" is the
file here (its SHA-256 checked before the strict load), anything else a path.
"""
from __future__ import annotations

from pathlib import Path

from diffinject.core.errors import ConfigError
from diffinject.experiment.shipped_diffusion import ShippedModel, verified

WEIGHTS = Path(__file__).parent / "weights"
SHIPPED = "shipped"

# (dataset, what) -> the file and its SHA-256
SHIPPED_GANS: dict[tuple[str, str], ShippedModel] = {
    ("colored_mnist_5k", "stylegan2_source"): ShippedModel(
        WEIGHTS / "colored_mnist_5k_stylegan2_source.pt",
        "8d998dd78d5bdd4f870d3e4d89a715d77ec2a8cc3e099b9717411bb55865fe56"),
    ("colored_mnist_5k", "fastgan_init"): ShippedModel(
        WEIGHTS / "colored_mnist_5k_fastgan_init.pt",
        "921597bf2cd54fef745ef7f6441ff26a858017688cf7e597a8eb9e7f9e2403c6"),
}


def resolve_gan_checkpoint(value: str, dataset: str, what: str, field: str) -> Path | None:
    """None for "" (train in the run); the verified shipped file for "shipped"; else the path,
    which must be a file. `what`: "stylegan2_source" or "fastgan_init"; `field` names the
    config field in errors."""
    if not value:
        return None
    if value == SHIPPED:
        model = SHIPPED_GANS.get((dataset, what))
        if model is None:
            shipped = sorted(d for d, w in SHIPPED_GANS if w == what)
            raise ConfigError(f"{field}=shipped: the project ships no {what} checkpoint for {dataset} (it ships "
                              f"one for {', '.join(shipped) or 'no dataset'}); set {field}= to train one in the run")
        return verified(model.path, model.sha256)
    path = Path(value).expanduser().resolve()
    if not path.is_file():
        raise ConfigError(f"{field}={value}: no such file (a diffinject GAN checkpoint, 'shipped' or empty)")
    return path

