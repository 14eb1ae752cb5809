"""The f-divergences D_f(p || q) = E_q f(p / q) the ratio-weighted objectives minimise, in one table: f and the
weight h(r) = r^2 f''(r) with its first two derivatives, r = p_teacher / q_student (uni_instruct.md §3; f-distill,
Xu et al. 2025, Table 1). f-distill weights DMD's gradient by h; Uni-Instruct also needs h' and h''."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

Fn = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class FDivergence:
    """f (convex, f(1) = 0), h = r^2 f'', h' = dh/dr, h'' = d^2h/dr^2."""

    f: Fn
    h: Fn
    dh: Fn
    d2h: Fn


def _zero(r: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(r)


F_DIVERGENCES: dict[str, FDivergence] = {
    # KL(q || p), the mode-seeking KL of DMD, SiD and SIM
    "rkl": FDivergence(lambda r: -r.log(), torch.ones_like, _zero, _zero),
    # KL(p || q)
    "fkl": FDivergence(lambda r: r * r.log(), lambda r: r, torch.ones_like, _zero),
    # KL(p || q) + KL(q || p)
    "jeffreys": FDivergence(lambda r: (r - 1) * r.log(), lambda r: 1 + r, torch.ones_like, _zero),
    # Jensen-Shannon: (KL(p || m) + KL(q || m)) / 2, m = (p + q) / 2
    "js": FDivergence(lambda r: 0.5 * (r * r.log() - (1 + r) * ((1 + r) / 2).log()), lambda r: r / (2 * (1 + r)),
                      lambda r: 1 / (2 * (1 + r) ** 2), lambda r: -1 / (1 + r) ** 3),
    # Pearson chi^2: int (p - q)^2 / q
    "pearson": FDivergence(lambda r: (r - 1) ** 2, lambda r: 2 * r**2, lambda r: 4 * r,
                           lambda r: torch.full_like(r, 4.0)),
    # Neyman chi^2: int (q - p)^2 / p
    "neyman": FDivergence(lambda r: 1 / r - 1, lambda r: 2 / r, lambda r: -2 / r**2, lambda r: 4 / r**3),
    # squared Hellinger: int (sqrt p - sqrt q)^2
    "hellinger": FDivergence(lambda r: (r.sqrt() - 1) ** 2, lambda r: r.sqrt() / 2, lambda r: r.rsqrt() / 4,
                             lambda r: -(r ** -1.5) / 8),
    # f-distill's softened reverse KL
    "sf": FDivergence(lambda r: (r + 1) * ((r + 1) / (2 * r)).log(), lambda r: 1 / (1 + r),
                      lambda r: -1 / (1 + r) ** 2, lambda r: 2 / (1 + r) ** 3),
}
