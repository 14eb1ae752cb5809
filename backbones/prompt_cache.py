"""The text encoders' cache: one computed row per prompt, the least recently used dropped beyond a size, so a run
that draws from a fixed prompt list encodes each prompt once. A text encoder split across ranks (ZeRO-3) computes
collectively: every rank must run the same forwards, so each computes the prompts any rank lacks. The ranks trade
their prompts in a gloo group of their own, apart from the model's own collectives (and on GPUs, where the
default group is NCCL's, without moving strings through device memory)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch


def prompt_exchange_group() -> Any:
    """A gloo group of every rank for trading prompts (every rank must create it, in the same order)."""
    return torch.distributed.new_group(backend="gloo")


def missing_on_any_rank(missing: list[str], group: Any) -> list[str]:
    """The union of every rank's missing prompts, in rank order then each rank's order: the same list on all."""
    lists: list[list[str] | None] = [None] * torch.distributed.get_world_size(group)
    torch.distributed.all_gather_object(lists, missing, group=group)
    return list(dict.fromkeys(prompt for found in lists for prompt in found))


class PromptCache:
    """Rows by prompt; `rows(prompts, compute)` computes only the prompts it does not hold. `collective`: the
    ranks' exchange group, when every rank calls `rows` together and `compute` runs on the same prompts on each (a
    rank that misses none still computes, and keeps, the others')."""

    def __init__(self, size: int, collective: Any | None = None) -> None:
        self.size = size
        self.collective = collective
        self.held: OrderedDict[str, torch.Tensor] = OrderedDict()

    def rows(self, prompts: list[str], compute: Callable[[list[str]], torch.Tensor],
             row_shape: tuple[int, ...]) -> torch.Tensor:
        """[len(prompts), *row_shape]: cached rows, and `compute(missing)` for the rest (each prompt once)."""
        missing = list(dict.fromkeys(p for p in prompts if p not in self.held))
        if self.collective is not None:
            missing = missing_on_any_rank(missing, self.collective)
        if missing:
            for prompt, row in zip(missing, compute(missing), strict=True):
                self.held[prompt] = row
        found = []
        for prompt in prompts:
            self.held.move_to_end(prompt)
            found.append(self.held[prompt])
        while len(self.held) > self.size:
            self.held.popitem(last=False)
        return torch.stack(found) if found else torch.zeros(0, *row_shape)
