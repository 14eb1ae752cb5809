"""Frechet distance between Gaussians fitted to two feature sets (FID's formula, Heusel et al. 2017)."""

from __future__ import annotations

import torch


def gaussian_stats(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    f = features.double()
    return f.mean(0), torch.cov(f.T)


def frechet_distance(mu1: torch.Tensor, cov1: torch.Tensor, mu2: torch.Tensor, cov2: torch.Tensor) -> float:
    """||mu1 - mu2||^2 + tr(C1 + C2 - 2 (C1 C2)^(1/2)); the trace of the root from the eigenvalues of C1 C2."""
    eigenvalues = torch.linalg.eigvals(cov1 @ cov2).real.clamp(min=0)
    trace_root = eigenvalues.sqrt().sum()
    return float((mu1 - mu2).pow(2).sum() + cov1.trace() + cov2.trace() - 2 * trace_root)
