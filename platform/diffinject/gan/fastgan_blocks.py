"""FastGAN's skip-layer excitation (Liu et al., 2021, Sec. 3.1): a low-resolution feature map
gates the channels of a high-resolution one, y = x_high * sigmoid(F(x_low)), where F pools
x_low to 4 x 4, convolves it 4 x 4 to 1 x 1, applies a leaky ReLU (0.1), a 1 x 1 convolution
and the sigmoid; FastGAN connects 4 -> 64, 8 -> 128 and 16 -> 256 px."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SkipLayerExcitation(nn.Module):
    def __init__(self, low_channels: int, high_channels: int):
        super().__init__()
        self.squeeze = nn.Conv2d(low_channels, high_channels, kernel_size=4, bias=False)
        self.excite = nn.Conv2d(high_channels, high_channels, kernel_size=1, bias=False)

    def gate(self, x_low: torch.Tensor) -> torch.Tensor:
        """N x C_high x 1 x 1 channel weights in (0, 1)."""
        pooled = F.adaptive_avg_pool2d(x_low, 4)
        return torch.sigmoid(self.excite(F.leaky_relu(self.squeeze(pooled), 0.1)))

    def forward(self, x_low: torch.Tensor, x_high: torch.Tensor) -> torch.Tensor:
        return x_high * self.gate(x_low)
