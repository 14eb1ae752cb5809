"""Learning-rate schedules from the config: linear warmup, then a linear or cosine decay to a fraction of the peak
by the run's last step (the two multiply), starting at the share `decay_start` of the run (0: from the first step;
later: the warmup-stable-decay shape of Hu et al. 2024, MiniCPM). The teacher trainer and every distillation
optimizer read the same."""

from __future__ import annotations

import math
from typing import Literal

Decay = Literal["none", "linear", "cosine"]


def scheduled_lr(lr: float, step: int, steps: int, warmup_steps: int = 0, decay: Decay = "none",
                 final_lr_fraction: float = 0.1, decay_start: float = 0.0) -> float:
    """The learning rate of 0-based step `step` of `steps`."""
    warm = min(1.0, (step + 1) / warmup_steps) if warmup_steps else 1.0
    progress = min(max(step / steps - decay_start, 0.0) / (1 - decay_start), 1.0)
    if decay == "linear":
        shape = 1 - progress
    elif decay == "cosine":
        shape = 0.5 * (1 + math.cos(math.pi * progress))
    else:
        return lr * warm
    return lr * warm * (final_lr_fraction + (1 - final_lr_fraction) * shape)
