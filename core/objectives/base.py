"""What every objective provides: a generator surrogate loss whose gradient is the method's, and the
fake score's own loss on detached generator samples (reference §1-§3)."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from potstill.core.denoiser import Denoiser

Reduction = Literal["mean", "sum"]


def reduce_loss(per_element: torch.Tensor, reduction: Reduction, batch: int | None = None) -> torch.Tensor:
    """`mean` over every element (DMD2's mse(mean)), or `sum` over elements divided by the batch (SiD)."""
    if reduction == "mean":
        return per_element.mean()
    return per_element.sum() / (batch or per_element.shape[0])


class Objective(nn.Module):
    """A distillation divergence. Subclasses set `uses_fake_score` and implement `generator_loss`."""

    uses_fake_score: bool = True

    def __init__(self, options) -> None:
        super().__init__()
        self.options = options
        self.fake_reduction: Reduction = getattr(options, "fake_reduction", "mean")

    def generator_loss(self, x: torch.Tensor, cond, teacher: Denoiser,
                       fake: Denoiser | None) -> tuple[torch.Tensor, dict[str, float]]:
        """Surrogate loss on generator samples `x` (which carry grad); returns (loss, logged scalars)."""
        raise NotImplementedError

    def fake_score_loss(self, x: torch.Tensor, cond, fake: Denoiser) -> tuple[torch.Tensor, dict[str, float]]:
        """Denoising score matching of the fake score on detached generator samples."""
        per_sample = fake.dsm_loss(x.detach(), cond)
        if self.fake_reduction == "sum":
            per_sample = per_sample * x[0].numel()
        loss = per_sample.mean()
        return loss, {"fake_dsm": loss.item()}
