"""Forward-mode tangents for the consistency objectives (sCM, MeanFlow): `torch.func.jvp` without grad, in float32
at least with autocast off, through the math attention kernel, since the fused ones have no forward-mode derivative
(pytorch#128971; consistency.md §7.1)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from potstill.core.config import ConfigError

if TYPE_CHECKING:
    from potstill.core.engine import Engine


def jvp_without_grad(fn: Callable[..., torch.Tensor], primals: tuple[torch.Tensor, ...],
                     tangents: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """(fn(*primals), d fn along tangents), each input and its tangent in float32 at least (float64 stays)."""
    def widened(p: torch.Tensor) -> torch.dtype:
        return torch.promote_types(p.dtype, torch.float32)

    autocast_off = torch.autocast(primals[0].device.type, enabled=False)
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), autocast_off:
        return torch.func.jvp(fn, tuple(p.to(widened(p)) for p in primals),
                              tuple(v.to(widened(p)) for p, v in zip(primals, tangents, strict=True)))


def refuse_partitioned_student(engine: Engine, objective: str) -> None:
    """ZeRO-3's per-module hooks are autograd functions without a forward-mode rule, so a student partitioned by
    ZeRO-3 cannot be differentiated by `torch.func.jvp` (NotImplementedError deep in DeepSpeed): say so at build."""
    if engine.partitions_trained():
        raise ConfigError(f"engine.zero_stage: {objective} takes the student's JVP (torch.func.jvp), which ZeRO-3's "
                          "module hooks do not support; use zero_stage 2 or lower (a sharded teacher is fine)")
