"""GAN losses and discriminator regularisers (reference §1, §8): non-saturating (DMD2, SiDA) and hinge
(ADD, LADD) losses, R1 = ||grad_x D(x_real)||^2, and APT's approximate R1, which penalises the change
of D under a small Gaussian perturbation of the real input instead of its gradient."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from potstill.core import parallel
from potstill.core.config import ConfigError
from potstill.core.tensors import sample_sum
from potstill.core.zero_build import is_partitioned

GANLoss = Literal["non_saturating", "hinge"]
ApproxR1Scaling = Literal["plain", "divided"]


def generator_gan_loss(logits_fake: torch.Tensor, kind: GANLoss) -> torch.Tensor:
    """Non-saturating softplus(-D(fake)) (DMD2) or hinge -D(fake) (LADD)."""
    if kind == "non_saturating":
        return F.softplus(-logits_fake).mean()
    return -logits_fake.mean()


def discriminator_gan_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor, kind: GANLoss) -> torch.Tensor:
    """softplus(D(fake)) + softplus(-D(real)) (DMD2), or 0.5 [relu(1 - D(real)) + relu(1 + D(fake))] (hinge)."""
    if kind == "non_saturating":
        return F.softplus(logits_fake).mean() + F.softplus(-logits_real).mean()
    return 0.5 * (F.relu(1 - logits_real).mean() + F.relu(1 + logits_fake).mean())


def allow_double_backward(module: nn.Module) -> nn.Module:
    """R1 differentiates a gradient; fused attention kernels have no second derivative on CPU, so timm
    attention layers fall back to their explicit softmax(q k^T) v path."""
    for layer in module.modules():
        if hasattr(layer, "fused_attn"):
            layer.fused_attn = False
    return module


def refuse_r1_on_partitions(r1_weight: float, partitions_trained: bool, reads: nn.Module | None = None) -> None:
    """R1's second backward reads weights that ZeRO-3 released after the first (a discriminator trained under
    ZeRO-3, or one that `reads` a sharded teacher): it fails deep in autograd, so the config is refused at build."""
    reads_partitions = reads is not None and any(is_partitioned(p) for p in reads.parameters())
    if r1_weight and (partitions_trained or reads_partitions):
        raise ConfigError("adversary.r1_weight: R1 differentiates the discriminator twice, which ZeRO-3's released "
                          "weights do not allow; use approx_r1_weight (APT's finite-difference R1) instead, or "
                          "engine.zero_stage 2 with an unsharded teacher")


def r1_penalty(logits_of: Callable[[torch.Tensor], torch.Tensor], real: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of ||d D(x) / d x||^2 at real inputs, differentiable for the critic's step."""
    real = real.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(logits_of(real).sum(), real, create_graph=True)
    return sample_sum(grad**2).mean()


def approximate_r1_penalty(logits_of: Callable[[torch.Tensor], torch.Tensor], real: torch.Tensor, sigma: float,
                           scaling: ApproxR1Scaling = "plain", logits: torch.Tensor | None = None) -> torch.Tensor:
    """APT's mean (D(x + sigma n) - D(x))^2 on real inputs; `divided` divides the difference by sigma
    (Self-Forcing's form, which approximates R1 itself as sigma -> 0). `logits`: D(x) when the caller already has
    it (it is then not computed again)."""
    real = real.detach()
    moved = logits_of(real + sigma * parallel.randn_like(real))
    difference = moved - (logits if logits is not None else logits_of(real))
    if scaling == "divided":
        difference = difference / sigma
    return (difference**2).mean()
