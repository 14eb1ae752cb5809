"""Exponential moving average of the generator's weights, the copy that is sampled and evaluated: a constant
decay, or EDM2's power-function average whose length is a fixed share of the training so far."""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from potstill.core.config import LONGEST_EMA_STD


def power_exponent(std: float) -> float:
    """The exponent gamma of the power-function EMA whose profile has relative standard deviation `std` (Karras et
    al. 2024, "Analyzing and Improving the Training Dynamics of Diffusion Models", eq. 3): the real root of
    std^2 = (gamma + 1) / ((gamma + 2)^2 (gamma + 3)), that is gamma^3 + 7 gamma^2 + (16 - std^-2) gamma
    + (12 - std^-2) = 0."""
    if not 0 < std < LONGEST_EMA_STD:
        raise ValueError(f"EMA std {std}: must be in (0, {LONGEST_EMA_STD:.4f}) (the profile of gamma = 0 has "
                         "12^-1/2, the longest average there is)")
    inverse = std ** -2.0
    roots = np.roots([1.0, 7.0, 16.0 - inverse, 12.0 - inverse])
    return float(max(root.real for root in roots if abs(root.imag) < 1e-9))


def _local(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor this rank holds: a ZeRO-3 parameter's partition, or the tensor itself."""
    return tensor.ds_tensor if hasattr(tensor, "ds_tensor") else tensor.data


class EMA(nn.Module):
    """ema <- decay * ema + (1 - decay) * online, parameters and floating buffers alike. When the student
    is partitioned (ZeRO-3) the EMA copy is partitioned the same way and each rank averages its own share."""

    def __init__(self, model: nn.Module, decay: float, shared: nn.Module | None = None,
                 copy_model: Callable[[nn.Module, dict], nn.Module] | None = None, std: float | None = None) -> None:
        """`shared`: a module whose tensors the model holds as its own frozen ones (a LoRA student's base, the
        teacher's); the copy keeps sharing them rather than copying them. `copy_model(model, memo)` makes the copy
        (an engine's: under ZeRO-3 one parameter at a time); copy.deepcopy by default. `std`: the power-function
        average of that relative standard deviation in place of the constant `decay`."""
        super().__init__()
        self.decay = decay
        self.exponent = power_exponent(std) if std is not None else None
        memo = {id(t): t for t in (*shared.parameters(), *shared.buffers())} if shared is not None else {}
        self.model = (copy_model or copy.deepcopy)(model, memo).eval()
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)

    def decay_at(self, updates: int) -> float:
        """The decay applied by the `updates`-th update (counted from 1): constant, or (1 - 1/updates)^(gamma + 1),
        which makes the EMA after n updates the average of all n weights under the weight profile t^gamma (EDM2)."""
        return self.decay if self.exponent is None else (1.0 - 1.0 / updates) ** (self.exponent + 1.0)

    @torch.no_grad()
    def update(self, model: nn.Module, updates: int) -> None:
        """Average in `model` as the `updates`-th update (counted from 1; a resumed run goes on counting)."""
        decay = self.decay_at(updates)
        ema_state = self.model.state_dict(keep_vars=True)
        for name, value in model.state_dict(keep_vars=True).items():
            target, source = _local(ema_state[name]), _local(value)
            if target.dtype.is_floating_point:
                target.lerp_(source.to(target.dtype), 1 - decay)
            else:
                target.copy_(source)
