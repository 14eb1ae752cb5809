"""A noise-conditioned MLP for vector data: the learned fake score of the vector modality."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from potstill.backbones.embeddings import TimestepEmbedder
from potstill.core.registry import BACKBONES


@dataclass
class MLPOptions:
    dim: int = 2
    hidden: int = 256
    depth: int = 3
    num_classes: int = 0


class MLPBackbone(nn.Module):
    """x, c_noise (and optional class) -> output of x's shape; hidden activations are its features. `time_extra`
    [B, hidden] is added to the time embedding (MeanFlow's interval embedding)."""

    takes_time_extra = True

    def __init__(self, options: MLPOptions) -> None:
        super().__init__()
        self.options = options
        h = options.hidden
        self.t_embedder = TimestepEmbedder(h, 128)
        self.y_embedder = nn.Embedding(options.num_classes + 1, h) if options.num_classes else None
        self.inp = nn.Linear(options.dim, h)
        self.blocks = nn.ModuleList(nn.Sequential(nn.SiLU(), nn.Linear(h, h)) for _ in range(options.depth))
        self.out = nn.Sequential(nn.SiLU(), nn.Linear(h, options.dim))

    def null_condition(self, cond: torch.Tensor) -> torch.Tensor:
        return torch.full_like(cond, self.options.num_classes)

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, cond=None, features: list[int] | None = None,
                time_extra: torch.Tensor | None = None):
        h = self.inp(x) + self.t_embedder(c_noise)
        if time_extra is not None:
            h = h + time_extra
        if self.y_embedder is not None and cond is not None:
            h = h + self.y_embedder(cond)
        activations = []
        for block in self.blocks:
            h = h + block(h)
            activations.append(h)
        out = self.out(h)
        if features is None:
            return out
        return out, [activations[i] for i in features]


BACKBONES.register("mlp", MLPOptions)(MLPBackbone)
