"""sCM's adaptive weighting w_phi(t) = -logvar(t) (Lu & Song 2024; consistency.md §3.3), two heads on the TrigFlow
time t, each starting at 0: a small MLP on sin, cos of k t (k = 1..8), or, as SANA-Sprint and FastGen have it, a
linear layer on the student backbone's own time embedding (which it then trains too)."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from potstill.backbones.embeddings import time_embedding_width
from potstill.core.denoiser import Denoiser

LogvarInput = Literal["time_features", "time_embedding"]


def zero_linear(width: int) -> nn.Linear:
    layer = nn.Linear(width, 1)
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


class TimeFeatureLogvarHead(nn.Module):
    """An MLP on sin, cos of k t, k = 1..8."""

    def __init__(self, hidden: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(16, hidden), nn.SiLU(), zero_linear(hidden))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        angles = t.float()[:, None] * torch.arange(1, 9, device=t.device, dtype=torch.float32)
        return self.net(torch.cat([angles.sin(), angles.cos()], -1))[:, 0]


class TimeEmbeddingLogvarHead(nn.Module):
    """A linear layer on the backbone's timestep embedding at the EDM noise level sigma_d tan t (sigma_d the
    network's), fed the noise conditioning the Denoiser itself would give its backbone there."""

    def __init__(self, denoiser: Denoiser) -> None:
        super().__init__()
        self._denoiser = [denoiser]        # the student's own network, registered there, not here
        self.linear = zero_linear(time_embedding_width(denoiser.backbone, "generator.logvar_input"))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        denoiser = self._denoiser[0]
        sigma = denoiser.sigma_data * torch.tan(t.double())
        schedule = denoiser.schedule
        c_noise = (0.25 * sigma.log() if denoiser.prediction == "edm"
                   else schedule.c_noise(schedule.t_at_edm_sigma(sigma)))
        return self.linear(denoiser.backbone.t_embedder(c_noise.float()))[:, 0]


def build_logvar_head(kind: LogvarInput, denoiser: Denoiser) -> nn.Module:
    return TimeFeatureLogvarHead() if kind == "time_features" else TimeEmbeddingLogvarHead(denoiser)
