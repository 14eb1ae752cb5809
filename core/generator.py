"""The student. A Generator maps (noise, condition) to samples that carry gradients back to its
parameters; `DenoiserGenerator` is the one-step or few-step student built from a Denoiser, with
DMD2's backward simulation for few-step training (reference §1); `NoisedRealGenerator` is ARC's student, which
trains on real samples noised to a drawn time and samples like it."""

from __future__ import annotations

import itertools

import torch
from torch import nn

from potstill.core import parallel
from potstill.core.denoiser import Denoiser, drop_conditions
from potstill.core.samplers import solve
from potstill.core.time_draws import TimeOptions, draw_times


def particle_index(noise: torch.Tensor, count: int) -> torch.Tensor:
    """The particle each noise row picks (the normal CDF of its first element, scaled to `count`): every particle
    equally likely, the same noise the same particle (SDS/VSD/CFD's each-sample-its-own-parameters students)."""
    return (torch.special.ndtr(noise.flatten(1)[:, 0]) * count).long().clamp(max=count - 1)


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

    def penalty(self) -> torch.Tensor | None:
        """A regulariser on the last training forward, added to the objective's loss (None: none)."""
        return None


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

    def use_steps(self, steps: int) -> None:
        """Sample in `steps` ping-pong steps at evenly spaced positions 1, (k-1)/k, ..., 1/k of the schedule (ARC's
        linear grid; `potstill sample --steps`)."""
        position = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)[:-1]
        self.times = self.denoiser.schedule.t_at(position).float().to(self.times.device)

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
        """Ping-pong sampling along the student's times: denoise, re-noise with fresh noise, denoise again."""
        times = torch.cat([self.times, self.times.new_zeros(1)])
        return solve(self.denoiser, noise, times, cond, "pingpong", self.guidance)[0]

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


class NoisedRealGenerator(DenoiserGenerator):
    """ARC's student (Novack et al. 2025): in training, a real sample x noised to t drawn by `gen_t`,
    x_t = alpha(t) x + sigma(t) eps (flow: (1 - t) x + t eps), gives x0 = D(x_t, t), the sample the relativistic
    discriminator compares with x itself. At inference it starts from noise and ping-pongs along `times`.
    `condition_dropout`: on the generator's own steps (with grad) that share of its conditions is dropped to the
    null one, as the anchor's G forward does (its factory default 0.1); the critic's no-grad pass keeps them."""

    trains_on_real = True

    def __init__(self, denoiser: Denoiser, times: list[float], gen_t: TimeOptions, guidance: float = 1.0,
                 condition_dropout: float = 0.0) -> None:
        super().__init__(denoiser, times, guidance)
        self.gen_t, self.condition_dropout = gen_t, condition_dropout

    def forward(self, real: torch.Tensor, cond=None) -> torch.Tensor:
        schedule = self.denoiser.schedule
        t = draw_times(self.gen_t, schedule, real.shape[0]).to(real)
        if torch.is_grad_enabled():
            cond = drop_conditions(self.denoiser, cond, self.condition_dropout, "generator.condition_dropout")
        return self.denoise(schedule.add_noise(real, parallel.randn_like(real), t), t, cond)
