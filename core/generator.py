"""The student. A Generator maps (noise, condition) to samples that carry gradients back to its
parameters; `DenoiserGenerator` is the one-step or few-step student built from a Denoiser, with
DMD2's backward simulation for few-step training (reference §1)."""

from __future__ import annotations

import itertools

import torch
from torch import nn

from potstill.core import parallel
from potstill.core.denoiser import Denoiser


class Generator(nn.Module):
    """Base class: `forward` is the training-time output (with grad), `sample` the inference output.
    `chunk_frames` is set by students that generate video chunk by chunk (None: the whole sample at once).
    `trains_on_real`: `forward` takes real samples and their conditions (CausVid's noised real clips) in
    training instead of noise; `sample` always starts from noise."""

    chunk_frames: int | None = None
    trains_on_real: bool = False

    def forward(self, noise: torch.Tensor, cond=None) -> torch.Tensor:
        raise NotImplementedError

    def sample(self, noise: torch.Tensor, cond=None) -> torch.Tensor:
        return self.forward(noise, cond)

    @property
    def nfe(self) -> int:
        """Network evaluations per sample at inference."""
        return 1


class DenoiserGenerator(Generator):
    """x = D(sigma(t_0) z, t_0), then for each further step re-noise to t_k with fresh noise and
    denoise again. With several steps, training runs DMD2's backward simulation: draw k, run the first
    k steps without grad from fresh noise, and differentiate only step k."""

    def __init__(self, denoiser: Denoiser, times: list[float], guidance: float = 1.0) -> None:
        super().__init__()
        if not times or any(a <= b for a, b in itertools.pairwise(times)):
            raise ValueError(f"generator.times: must be a non-empty decreasing list, got {times}")
        self.denoiser = denoiser
        self.register_buffer("times", torch.tensor(times, dtype=torch.float32), persistent=False)
        self.guidance = guidance

    @property
    def nfe(self) -> int:
        return len(self.times)

    def denoise(self, x_t: torch.Tensor, t: torch.Tensor, cond) -> torch.Tensor:
        """The student's x0 at given noisy inputs and times, in one pass (ODE regression trains this)."""
        return self.denoiser.x0(x_t, t, cond, self.guidance)

    def _step(self, x_t: torch.Tensor, k: int, cond) -> torch.Tensor:
        return self.denoise(x_t, self.times[k].expand(x_t.shape[0]), cond)

    def _renoise(self, x0: torch.Tensor, k: int) -> torch.Tensor:
        t = self.times[k].expand(x0.shape[0])
        return self.denoiser.schedule.add_noise(x0, parallel.randn_like(x0), t)

    def _start(self, noise: torch.Tensor) -> torch.Tensor:
        return self.denoiser.schedule.sigma(self.times[0]) * noise

    def sample(self, noise: torch.Tensor, cond=None) -> torch.Tensor:
        x0 = self._step(self._start(noise), 0, cond)
        for k in range(1, len(self.times)):
            x0 = self._step(self._renoise(x0, k), k, cond)
        return x0

    def forward(self, noise: torch.Tensor, cond=None) -> torch.Tensor:
        last = int(torch.randint(len(self.times), ())) if len(self.times) > 1 else 0
        x_t = self._start(noise)
        if last > 0:
            with torch.no_grad():
                x0 = self._step(x_t, 0, cond)
                for k in range(1, last):
                    x0 = self._step(self._renoise(x0, k), k, cond)
                x_t = self._renoise(x0, last)
        return self._step(x_t, last, cond)
