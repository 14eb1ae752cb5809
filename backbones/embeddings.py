"""Sinusoidal embeddings of noise levels, shared by the backbones."""

from __future__ import annotations

import math

import torch
from torch import nn


def sinusoidal(values: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """[B] -> [B, dim]: cos and sin at geometrically spaced frequencies (DDPM / DiT timestep embedding), in float32
    or, for float64 values, in float64 (so a JVP along t is as exact as the rest of a float64 model)."""
    half = dim // 2
    dtype = torch.promote_types(values.dtype, torch.float32)
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=dtype, device=values.device) / half)
    args = values.to(dtype)[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class TimestepEmbedder(nn.Module):
    """Sinusoidal frequencies -> MLP, with DiT's parameter names (`mlp.0`, `mlp.2`)."""

    def __init__(self, hidden: int, frequency_dim: int = 256) -> None:
        super().__init__()
        self.frequency_dim = frequency_dim
        self.mlp = nn.Sequential(nn.Linear(frequency_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(sinusoidal(t, self.frequency_dim).to(self.mlp[0].weight.dtype))
