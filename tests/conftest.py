"""Shared fixtures: one local Ray instance per session, one Colored Digits build."""
from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session")
def ray_session():
    import ray

    from diffinject.cluster.session import ensure_ray

    os.environ.pop("RAY_ADDRESS", None)
    ensure_ray(num_cpus=2)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def digits_root(tmp_path_factory):
    """Colored Digits at every ratio, built once, plus its Parquet cache root."""
    from diffinject.data.embedded import build_embedded

    root = tmp_path_factory.mktemp("digits")
    build_embedded("colored_digits", root / "data")
    return root


@pytest.fixture(scope="session")
def digits_parquet(digits_root):
    from diffinject.data.parquet import prepare_dataset
    from diffinject.data.registry import get_dataset_spec

    return prepare_dataset(digits_root / "data", digits_root / "cache", get_dataset_spec("colored_digits"), "1")


@pytest.fixture
def quick_cfg(digits_root, tmp_path):
    """A fast Colored Digits config writing its Ray results under tmp_path."""
    from diffinject.config.builder import experiment_config

    cfg = experiment_config("colored_digits", "1", quick=True)
    cfg.data.data_root = str(digits_root / "data")
    cfg.data.cache_root = str(digits_root / "cache")
    cfg.run.storage_path = str(tmp_path / "ray_results")
    cfg.classifier.num_steps, cfg.classifier.eval_every, cfg.classifier.log_every = 40, 10, 5
    cfg.bias.classifier.num_steps, cfg.bias.classifier.eval_every = 30, 10
    cfg.classifier.checkpoint_every = cfg.bias.classifier.checkpoint_every = 0  # a resume state at every evaluation
    return cfg


@pytest.fixture
def mlflow_uri(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """Empty torch hub cache; any download attempt fails the test."""
    import torch

    home = tmp_path / "torch_home"
    monkeypatch.setenv("TORCH_HOME", str(home))

    def no_download(*args, **kwargs):
        raise AssertionError(f"download attempted: {args}")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    return home
