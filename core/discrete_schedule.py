"""A variance-preserving schedule from a discrete table of alpha_bar (DDPM's betas as a diffusers scheduler config
makes them), not its continuous approximation: t in [0, 1] maps to the timestep index k = (N - 1) t, alpha_bar is
the table at integer k and interpolated in log alpha_bar between them, and the network's time input is k itself.
At every integer timestep the forward process is the scheduler's `add_noise` exactly, except where a zero-terminal-SNR
table (`rescale_betas_zero_snr`) ends in alpha_bar = 0: that entry becomes 2^-24, as diffusers' Euler scheduler
makes it, so log alpha_bar stays finite."""

from __future__ import annotations

import torch

from potstill.core.schedules import Schedule

ZERO_SNR_FLOOR = 2.0**-24


class DiscreteVPSchedule(Schedule):
    """alpha = sqrt(abar(t)), sigma = sqrt(1 - abar(t)); `alphas_cumprod` is the scheduler's table [N]."""

    def __init__(self, alphas_cumprod: torch.Tensor) -> None:
        table = torch.as_tensor(alphas_cumprod, dtype=torch.float64)
        if len(table) > 1 and table[-1] == 0:
            table = torch.cat([table[:-1], table.new_full((1,), ZERO_SNR_FLOOR)])
        if table.ndim != 1 or len(table) < 2 or not bool((table[1:] < table[:-1]).all()):
            raise ValueError("teacher: the scheduler's alphas_cumprod must fall strictly over at least 2 timesteps")
        self.log_table = table.log()
        self.steps = len(table)
        self.t_min, self.t_max = 0.0, 1.0

    def _index(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        k = (t.double() * (self.steps - 1)).clamp(0, self.steps - 1)
        low = k.floor().clamp(max=self.steps - 2).long()
        table = self.log_table.to(t.device)
        return k - low, table[low], table[low + 1]

    def log_alpha_bar(self, t: torch.Tensor) -> torch.Tensor:
        """log abar at t, in float64."""
        frac, a, b = self._index(t)
        return a + frac * (b - a)

    def d_log_alpha_bar(self, t: torch.Tensor) -> torch.Tensor:
        _, a, b = self._index(t)
        return (b - a) * (self.steps - 1)

    def alpha(self, t):
        return (0.5 * self.log_alpha_bar(t)).exp().to(t.dtype)

    def sigma(self, t):
        return (-torch.expm1(self.log_alpha_bar(t))).sqrt().to(t.dtype)

    def d_alpha(self, t):
        return (0.5 * self.d_log_alpha_bar(t) * (0.5 * self.log_alpha_bar(t)).exp()).to(t.dtype)

    def d_sigma(self, t):
        log_abar = self.log_alpha_bar(t)
        return (-0.5 * self.d_log_alpha_bar(t) * log_abar.exp() / (-torch.expm1(log_abar)).sqrt()).to(t.dtype)

    def t_at(self, position):
        return position

    def sample_dsm_t(self, n, generator=None):
        return torch.randint(self.steps, (n,), generator=generator).float() / (self.steps - 1)

    def dsm_weight(self, t):
        log_abar = self.log_alpha_bar(t)
        return (log_abar.exp() / -torch.expm1(log_abar)).to(t.dtype)

    def c_noise(self, t):
        return (self.steps - 1) * t
