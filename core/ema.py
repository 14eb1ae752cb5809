"""Exponential moving average of the generator's weights, the copy that is sampled and evaluated."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA(nn.Module):
    """ema <- decay * ema + (1 - decay) * online, parameters and floating buffers alike."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        super().__init__()
        self.decay = decay
        self.model = copy.deepcopy(model).requires_grad_(False).eval()

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        ema_state = self.model.state_dict()
        for name, value in model.state_dict().items():
            target = ema_state[name]
            if target.dtype.is_floating_point:
                target.lerp_(value.to(target.dtype), 1 - self.decay)
            else:
                target.copy_(value)
