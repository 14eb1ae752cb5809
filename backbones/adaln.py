"""What the DiT backbones share: adaLN-Zero initialisation (every residual branch and the output start at zero,
Peebles & Xie 2023) and the class / pooled-text condition with its null for classifier-free guidance. A subclass
has `x_embedder`, `t_embedder`, `y_embedder`, `text_embedder`, `blocks` and `final_layer`, DiT's names."""

from __future__ import annotations

import torch
from torch import nn


class AdaLNZeroBackbone(nn.Module):
    def _initialize(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        weight = self.x_embedder.proj.weight
        nn.init.xavier_uniform_(weight.view(weight.shape[0], -1))
        nn.init.zeros_(self.x_embedder.proj.bias)
        if self.y_embedder is not None:
            nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        for block in self.blocks:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        for layer in (self.final_layer.adaLN_modulation[-1], self.final_layer.linear):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def null_condition(self, cond: torch.Tensor) -> torch.Tensor:
        if cond.is_floating_point():
            return torch.zeros_like(cond)
        return torch.full_like(cond, self.options.num_classes)

    def embed_condition(self, cond) -> torch.Tensor | int:
        if cond is None:
            return 0
        if cond.is_floating_point():
            if self.text_embedder is None:
                raise ValueError(f"{type(self).__name__} got text embeddings but was built with text_dim = 0")
            return self.text_embedder(cond)
        if self.y_embedder is None:
            raise ValueError(f"{type(self).__name__} got class labels but was built with num_classes = 0")
        return self.y_embedder(cond)
