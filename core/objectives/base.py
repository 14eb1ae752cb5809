"""What every objective provides: a generator surrogate loss whose gradient is the method's, and the
fake score's own loss on detached generator samples (reference §1-§7). Shared here: how the noisy
sample is made and how losses are reduced; how t is drawn lives in `core/time_draws.py`."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from potstill.core import parallel
from potstill.core.denoiser import Denoiser
from potstill.core.generator import Generator
from potstill.core.schedules import Schedule
from potstill.core.time_draws import draw_times

Reduction = Literal["mean", "sum"]


def reduce_loss(per_element: torch.Tensor, reduction: Reduction, batch: int | None = None) -> torch.Tensor:
    """`mean` over every element (DMD2's mse(mean)), or `sum` over elements divided by the batch (SiD)."""
    if reduction == "mean":
        return per_element.mean()
    return per_element.sum() / (batch or per_element.shape[0])


class Objective(nn.Module):
    """A distillation divergence. Subclasses set the flags below and implement `generator_loss`.

    `uses_fake_score`: trains an online fake score by `fake_score_loss`. `samples_generator`: the generator
    update draws samples G(z) (False: the objective feeds the generator its own inputs, as ODE regression
    does, so there are no samples for an adversary). `needs_real_data`: the critic
    loss also reads real samples (SiDA). `needs_adversary`: the generator loss reads the adversary
    (f-distill's and Uni-Instruct's density ratio); `requires_gan_term`: the method needs the adversary's
    generator term too (f-distill). `default_adversary`: the adversary built when the config names none
    (ADD, LADD and APT are adversarial methods on their own)."""

    uses_fake_score: bool = True
    samples_generator: bool = True
    needs_real_data: bool = False
    needs_adversary: bool = False
    requires_gan_term: bool = False
    default_adversary: str | None = None

    def __init__(self, options) -> None:
        super().__init__()
        self.options = options
        self.fake_reduction: Reduction = getattr(options, "fake_reduction", "mean")
        self.progress = 0.0                 # the run's progress in [0, 1], set by the Distiller (annealed t draws)
        self.noise_source: nn.Module | None = None

    def use_noise_source(self, source: nn.Module | None) -> None:
        """Draw eps from the modality's noise hook (text-to-3D's consistent noise) instead of i.i.d. normal;
        None keeps i.i.d. A hook with state is saved with the objective."""
        self.noise_source = source

    @property
    def fake_training_guidance(self) -> float:
        """CFG scale on the fake score's own prediction in its denoising loss (SiD-LSG's kappa_1)."""
        return 1.0

    def noisy(self, x: torch.Tensor, schedule: Schedule) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(t, eps, x_t): the times and noise at which the generator loss compares the scores."""
        t = draw_times(self.options, schedule, x.shape[0], self.progress).to(x)
        eps = self.draw_noise(x)
        return t, eps, schedule.add_noise(x, eps, t)

    def draw_noise(self, x: torch.Tensor) -> torch.Tensor:
        """eps shaped like x: i.i.d. normal, or the modality's noise hook's."""
        return parallel.randn_like(x) if self.noise_source is None else self.noise_source(x)

    def generator_step(self, generator: nn.Module, noise: torch.Tensor, cond, teacher: Denoiser,
                       fake: Denoiser | None, adversary: nn.Module | None = None
                       ) -> tuple[torch.Tensor, dict[str, float], torch.Tensor | None]:
        """(loss, logged scalars, samples): the generator's samples G(noise, cond) scored by `generator_loss`, plus
        the generator's own penalty on that forward, where it has one (a 3-D field's opacity entropy)."""
        x = generator(noise, cond).float()
        loss, metrics = self.generator_loss(x, cond, teacher, fake, adversary)
        penalty = generator.penalty() if isinstance(generator, Generator) else None
        if penalty is not None:
            loss = loss + penalty
            metrics["generator_penalty"] = penalty.item()
        return loss, metrics, x

    def critic_samples(self, generator: nn.Module, inputs: torch.Tensor, cond) -> torch.Tensor:
        """The generator samples the critic's step sees (under no_grad): G(inputs, cond), unless the method draws
        its adversarial samples its own way (SANA-Sprint's sCM + LADD)."""
        return generator(inputs, cond)

    def after_generator_step(self, generator: nn.Module) -> None:
        """Called after each generator update: an objective with its own copy of the student (CD's target
        network) follows it here. Most have none."""

    def generator_loss(self, x: torch.Tensor, cond, teacher: Denoiser, fake: Denoiser | None,
                       adversary: nn.Module | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """Surrogate loss on generator samples `x` (which carry grad); returns (loss, logged scalars)."""
        raise NotImplementedError

    def fake_score_loss(self, x: torch.Tensor, cond, fake: Denoiser,
                        real: tuple[torch.Tensor, object] | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """Denoising score matching of the fake score on detached generator samples."""
        loss = self.reduce_fake_loss(fake.dsm_loss(x.detach(), cond, guidance=self.fake_training_guidance), x)
        return loss, {"fake_dsm": loss.item()}

    def reduce_fake_loss(self, per_sample: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Batch mean of per-sample DSM losses (means over elements), times the element count for `sum`."""
        return per_sample.mean() * (x[0].numel() if self.fake_reduction == "sum" else 1)
