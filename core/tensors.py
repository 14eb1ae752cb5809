"""Small tensor helpers shared by the core: per-sample broadcasting and per-sample reductions."""

from __future__ import annotations

from collections.abc import Callable

import torch
from einops import rearrange, reduce


def per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape a [B] tensor so it broadcasts against `like` of shape [B, ...]; per-frame [B, F] values of a
    video `like` [B, C, F, H, W] broadcast along its frame axis, as [B, 1, F, 1, 1]."""
    values = torch.as_tensor(values, dtype=like.dtype, device=like.device)
    if values.ndim == 0:
        values = values.expand(like.shape[0])
    if values.ndim == 2:
        if like.ndim != 5:
            raise ValueError(f"per-frame values {list(values.shape)} need a video [B, C, F, H, W], got "
                             f"{list(like.shape)}")
        return rearrange(values, "b f -> b 1 f 1 1")
    pattern = "b -> b" + " 1" * (like.ndim - 1)
    return rearrange(values, pattern)


def map_tensors(value, fn: Callable[[torch.Tensor], torch.Tensor]):
    """`fn` applied to a tensor, or to the tensors in a dict, tuple or list; anything else is returned as is."""
    if isinstance(value, dict):
        return {k: map_tensors(v, fn) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return type(value)(map_tensors(v, fn) for v in value)
    return fn(value) if isinstance(value, torch.Tensor) else value


def to_device(value, device: torch.device | str):
    """Move a tensor, or the tensors in a dict, tuple or list, to `device`; anything else is returned as is."""
    return map_tensors(value, lambda tensor: tensor.to(device))


def sample_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean over every non-batch dimension: [B, ...] -> [B]."""
    return reduce(x, "b ... -> b", "mean")


def sample_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum over every non-batch dimension: [B, ...] -> [B]."""
    return reduce(x, "b ... -> b", "sum")
