"""Original DMD (Yin et al. 2023; reference §1): the paper's distribution-matching gradient
alpha_t (D_fake - D_real) / mean|x - D_real| plus a regression loss lambda_reg d(G(z_ref), y_ref) on
noise-image pairs that the teacher's deterministic ODE produced once from the same noise. The pairs
are made on first use (seeded, so a resumed run makes the same ones) by `core/ode_pairs.py` and cached in
`pairs_file` when given. The paper's d is LPIPS; LPIPS needs pretrained VGG weights, so d here is L2 or pseudo-Huber."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from potstill.core.denoiser import Denoiser
from potstill.core.objectives.dmd2 import DMD2, DMD2Options
from potstill.core.ode_pairs import PairSettings, load_or_make, next_rows
from potstill.core.registry import OBJECTIVES
from potstill.core.samplers import default_solver
from potstill.core.tensors import sample_mean


@dataclass
class DMDOptions(DMD2Options):
    gradient_form: Literal["dmd2", "paper"] = "paper"
    regression_weight: float = 0.25
    regression_distance: Literal["l2", "pseudo_huber"] = "l2"
    huber_c: float = 0.03
    pairs: int = 1024
    pair_batch: int = 64
    pair_nfe: int = 35
    pair_seed: int = 20231230
    pairs_file: str | None = None


def regression_distance(a: torch.Tensor, b: torch.Tensor, kind: str, c: float) -> torch.Tensor:
    """Per-sample mean squared error, or the pseudo-Huber sqrt(||a - b||^2 / n + c^2) - c."""
    mse = sample_mean((a - b) ** 2)
    return mse if kind == "l2" else (mse + c**2).sqrt() - c


class DMD(DMD2):
    """DMD2's matching gradient in the paper's form, plus the regression on cached teacher pairs."""

    def __init__(self, options: DMDOptions, generator, modality) -> None:
        super().__init__(options)
        self._generator = [generator]    # lists keep these out of this module's parameters
        self._modality = [modality]
        self.pairs: dict[str, torch.Tensor] | None = None
        self.register_buffer("cursor", torch.zeros((), dtype=torch.long))   # checkpointed, so resumes continue

    def pair_settings(self) -> PairSettings:
        o = self.options
        return PairSettings(o.pairs, [], o.pair_nfe, default_solver(o.pair_nfe), o.guidance, o.pair_seed)

    def load_pairs(self, teacher: Denoiser, device: torch.device) -> dict[str, torch.Tensor]:
        """Noise and the teacher's ODE endpoint for it (`target`), shared with the video ODE initialisation."""
        pairs = load_or_make(teacher, self._modality[0], self.pair_settings(), device, self.options.pairs_file, None,
                             self.options.pair_batch)
        return {"target": pairs.pop("endpoint"), **pairs}

    def regression_loss(self, teacher: Denoiser, batch: int, device: torch.device) -> torch.Tensor:
        """lambda_reg * mean d(G(z_ref), y_ref) over the next `batch` cached pairs, cycling through them."""
        if self.pairs is None:
            self.pairs = self.load_pairs(teacher, device)
        index = next_rows(self.cursor, self.options.pairs, batch)
        cond = self.pairs["cond"][index].to(device) if "cond" in self.pairs else None
        out = self._generator[0](self.pairs["noise"][index].to(device), cond).float()
        distance = regression_distance(out, self.pairs["target"][index].to(device), self.options.regression_distance,
                                       self.options.huber_c)
        return self.options.regression_weight * distance.mean()

    def generator_loss(self, x, cond, teacher: Denoiser, fake: Denoiser | None, adversary=None):
        dm, metrics = super().generator_loss(x, cond, teacher, fake)
        regression = self.regression_loss(teacher, x.shape[0], x.device)
        return dm + regression, metrics | {"regression": regression.item()}


@OBJECTIVES.register("dmd", DMDOptions)
def build_dmd(options: DMDOptions, context) -> DMD:
    return DMD(options, context.generator, context.modality)
