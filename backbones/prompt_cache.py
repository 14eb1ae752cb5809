"""The text encoders' cache: one computed row per prompt, the least recently used dropped beyond a size, so a run
that draws from a fixed prompt list encodes each prompt once."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import torch


class PromptCache:
    """Rows by prompt; `rows(prompts, compute)` computes only the prompts it does not hold."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.held: OrderedDict[str, torch.Tensor] = OrderedDict()

    def rows(self, prompts: list[str], compute: Callable[[list[str]], torch.Tensor],
             row_shape: tuple[int, ...]) -> torch.Tensor:
        """[len(prompts), *row_shape]: cached rows, and `compute(missing)` for the rest (each prompt once)."""
        missing = list(dict.fromkeys(p for p in prompts if p not in self.held))
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
