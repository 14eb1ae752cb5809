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


def time_embedding_width(backbone: nn.Module, key: str) -> int:
    """The width of a backbone's timestep embedding (`t_embedder`), for heads and embeddings that join it; a
    backbone without one is an error naming `key`."""
    embedder = getattr(backbone, "t_embedder", None)
    if not isinstance(embedder, TimestepEmbedder):
        raise ValueError(f"{key}: needs the network's timestep embedding, which {type(backbone).__name__} does not "
                         "have; use a dit or mlp network")
    return embedder.mlp[2].out_features
