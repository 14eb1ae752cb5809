"""A small 3-D CNN classifier of moving-digit clips; its pooled features define the toy Frechet video distance.
Fully convolutional with circular padding in H and W (the clips live on a torus), then a maximum over the
torus and a mean over frames, so one set of weights scores clips of any canvas size and any number of frames
(an average over H and W would dilute the digit by the canvas area, making features depend on the canvas)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class TorusConv3d(nn.Conv3d):
    """A 3x3x3 convolution padded circularly in H and W and with zeros in time."""

    def __init__(self, in_channels: int, out_channels: int, spatial_stride: int = 1) -> None:
        super().__init__(in_channels, out_channels, 3, stride=(1, spatial_stride, spatial_stride), padding=(1, 0, 0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, (1, 1, 1, 1, 0, 0), mode="circular"))


class VideoClassifier(nn.Module):
    """[B, 1, F, H, W] in [-1, 1] -> (logits [B, 10], features [B, 64])."""

    feature_dim = 64

    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(
            TorusConv3d(1, 16), nn.SiLU(),
            TorusConv3d(16, 32, spatial_stride=2), nn.SiLU(),
            TorusConv3d(32, 64, spatial_stride=2), nn.SiLU(),
            TorusConv3d(64, 64), nn.SiLU(),
        )
        self.project = nn.Sequential(nn.Linear(64, self.feature_dim), nn.SiLU())
        self.head = nn.Linear(self.feature_dim, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.project(self.trunk(x).amax((3, 4)).mean(2))
        return self.head(features), features
