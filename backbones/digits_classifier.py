"""A small CNN classifier of 8x8 digits; its penultimate features define the Frechet digits distance."""

from __future__ import annotations

import torch
from torch import nn


class DigitsClassifier(nn.Module):
    """[B, 1, 8, 8] in [-1, 1] -> (logits [B, 10], features [B, 128])."""

    feature_dim = 128

    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.SiLU(),
            nn.Conv2d(32, 64, 3, padding=1), nn.SiLU(), nn.AvgPool2d(2),
            nn.Conv2d(64, 64, 3, padding=1), nn.SiLU(),
            nn.Flatten(), nn.Linear(64 * 4 * 4, self.feature_dim), nn.SiLU(),
        )
        self.head = nn.Linear(self.feature_dim, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.trunk(x)
        return self.head(features), features
