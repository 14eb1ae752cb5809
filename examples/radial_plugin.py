"""An out-of-tree adapter for potstill: a modality and an objective registered from outside the package, named by a
config's `plugins: [./radial_plugin.py]` (or installed with an entry point in the group `potstill.plugins`).

The modality, `radial`, is the built-in `gmm` teacher's 2-D points scored by how far the samples' radii are from the
teacher's (the mean absolute gap between sorted radii, against a second exact draw as its floor). The objective,
`score_gap`, is the plainest score distillation: the generator's samples x move along D_fake(x_t) - D_teacher(x_t)
at a uniformly drawn noise position, through the surrogate 0.5 ||x - sg(x - (D_fake - D_teacher))||^2."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from potstill.core.modality import Modality
from potstill.core.objectives.base import Objective
from potstill.core.registry import MODALITIES, OBJECTIVES
from potstill.core.tensors import sample_sum
from potstill.core.time_draws import TimeOptions


@dataclass
class RadialOptions:
    """`floor_seed`: the seed of the second exact draw the score is compared with."""

    floor_seed: int = 2


def radius_gap(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean absolute difference between the sorted radii of two equal-size point sets (a 1-D W1)."""
    n = min(len(a), len(b))
    return float((a[:n].double().norm(dim=1).sort().values - b[:n].double().norm(dim=1).sort().values).abs().mean())


class RadialModality(Modality):
    """2-D points from the `gmm` teacher's mixture, scored by their radii."""

    sample_formats = (".pt",)

    def __init__(self, options: RadialOptions, teacher) -> None:
        mixture = getattr(teacher, "mixture", None)
        if mixture is None or mixture.dim != 2:
            raise ValueError("modality.kind: 'radial' needs the 2-D 'gmm' teacher")
        self.options, self.mixture, self.sample_shape = options, mixture, (2,)

    def draw_inputs(self, n, generator=None):
        return torch.randn(n, 2, generator=generator), None

    def save_samples(self, samples, cond, path: Path) -> Path:
        path = path.with_suffix(".pt")
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(samples, path)
        return path

    def evaluate(self, samples, cond) -> dict[str, float]:
        n = len(samples)
        reference = self.mixture.sample(n, torch.Generator().manual_seed(1))
        second = self.mixture.sample(n, torch.Generator().manual_seed(self.options.floor_seed))
        return {"radius_gap": radius_gap(samples, reference), "radius_gap_floor": radius_gap(second, reference)}

    def headline_metric(self) -> str:
        return "radius_gap"


MODALITIES.register("radial", RadialOptions)(lambda options, context: RadialModality(options, context.teacher))


@dataclass
class ScoreGapOptions(TimeOptions):
    """Noise positions uniform on [t_low, t_high] (TimeOptions)."""


class ScoreGap(Objective):
    """0.5 ||x - sg(x - (D_fake - D_teacher))||^2 per sample, so the gradient in x is D_fake - D_teacher."""

    def generator_loss(self, x, cond, teacher, fake=None, adversary=None):
        with torch.no_grad():
            t, _, x_t = self.noisy(x.detach(), teacher.schedule)
            direction = fake.x0(x_t, t, cond) - teacher.x0(x_t, t, cond)
        loss = 0.5 * sample_sum((x - (x - direction).detach()) ** 2).mean()
        return loss, {"score_gap": loss.item()}


OBJECTIVES.register("score_gap", ScoreGapOptions)(lambda options, context: ScoreGap(options))
