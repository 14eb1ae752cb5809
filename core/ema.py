"""Exponential moving average of the generator's weights, the copy that is sampled and evaluated."""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn


def _local(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor this rank holds: a ZeRO-3 parameter's partition, or the tensor itself."""
    return tensor.ds_tensor if hasattr(tensor, "ds_tensor") else tensor.data


class EMA(nn.Module):
    """ema <- decay * ema + (1 - decay) * online, parameters and floating buffers alike. When the student
    is partitioned (ZeRO-3) the EMA copy is partitioned the same way and each rank averages its own share."""

    def __init__(self, model: nn.Module, decay: float, shared: nn.Module | None = None,
                 copy_model: Callable[[nn.Module, dict], nn.Module] | None = None) -> None:
        """`shared`: a module whose tensors the model holds as its own frozen ones (a LoRA student's base, the
        teacher's); the copy keeps sharing them rather than copying them. `copy_model(model, memo)` makes the copy
        (an engine's: under ZeRO-3 one parameter at a time); copy.deepcopy by default."""
        super().__init__()
        self.decay = decay
        memo = {id(t): t for t in (*shared.parameters(), *shared.buffers())} if shared is not None else {}
        self.model = (copy_model or copy.deepcopy)(model, memo).eval()
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        ema_state = self.model.state_dict(keep_vars=True)
        for name, value in model.state_dict(keep_vars=True).items():
            target, source = _local(ema_state[name]), _local(value)
            if target.dtype.is_floating_point:
                target.lerp_(source.to(target.dtype), 1 - self.decay)
            else:
                target.copy_(source)
