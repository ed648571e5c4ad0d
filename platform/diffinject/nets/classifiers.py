"""Classifier networks: the CMNIST MLP and torchvision's ResNet-18 (from scratch)."""
from __future__ import annotations

import torch
from torch import nn

from diffinject.core.errors import ConfigError


class MLP(nn.Module):
    """DisEnt's Colored MNIST MLP: input-100-100-16-classes with ReLUs.

    `divide_by_255` reproduces the reference code, which feeds ToTensor() images in [0, 1]
    and divides by 255 a second time inside forward.
    """

    def __init__(self, in_features: int, num_classes: int, divide_by_255: bool = False):
        super().__init__()
        self.divide_by_255 = divide_by_255
        self.feature = nn.Sequential(
            nn.Linear(in_features, 100), nn.ReLU(),
            nn.Linear(100, 100), nn.ReLU(),
            nn.Linear(100, 16), nn.ReLU(),
        )
        self.classifier = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        if self.divide_by_255:
            x = x / 255.0
        return self.classifier(self.feature(x))


def build_classifier(arch: str, num_classes: int, input_shape: tuple[int, int, int],
                     mlp_divide_by_255: bool = False) -> nn.Module:
    """input_shape is (C, H, W) of what the network sees (after any resize)."""
    if arch == "mlp":
        c, h, w = input_shape
        return MLP(c * h * w, num_classes, divide_by_255=mlp_divide_by_255)
    if arch == "resnet18":
        from torchvision.models import resnet18

        return resnet18(weights=None, num_classes=num_classes)
    raise ConfigError(f"unknown classifier arch {arch!r}; expected mlp or resnet18")
