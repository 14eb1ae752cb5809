"""What the Distiller needs from a source of real samples (for discriminators, SiDA, ...): batches on
demand, a state that resumes the stream exactly, and counters for the run's log."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

import torch


class RealData(ABC):
    """A resumable, endless stream of (samples, conditions).

    `splits_by_rank = False`: every rank draws the global batch and keeps its rows (the in-memory sets).
    `splits_by_rank = True`: each rank reads its own share of the data (webdataset shards) and `next`
    returns this rank's rows directly; then every rank's state goes into the checkpoint."""

    splits_by_rank: bool = False
    in_codec_space: bool = False      # samples are a codec's already (stored latents): nothing encodes them again

    @abstractmethod
    def next(self, n: int) -> tuple[torch.Tensor, Any]:
        """The next n samples and their conditions (None for unconditional data)."""

    @abstractmethod
    def state_dict(self) -> dict:
        """Everything needed to continue the stream exactly."""

    @abstractmethod
    def load_state_dict(self, state: dict) -> None:
        """Continue from a `state_dict()`."""

    def metrics(self) -> dict[str, float]:
        """Counters for the run's log (summed over ranks): samples delivered, skipped, and so on."""
        return {}

    def report(self) -> dict:
        """A summary for `report.json`."""
        return {}


class SeededStream(RealData):
    """Endless samples `draw(n, generator)` from one seeded torch generator, whose state alone resumes the stream
    exactly (the synthetic laws: moving digits, tones); `options` is the resolved law it draws from, `num_classes`
    its class count where it has labels and says so."""

    def __init__(self, draw: Callable[[int, torch.Generator], tuple[torch.Tensor, Any]], seed: int,
                 options: Any = None, num_classes: int | None = None) -> None:
        self.draw, self.options, self.num_classes = draw, options, num_classes
        self.generator = torch.Generator().manual_seed(seed)

    def next(self, n: int) -> tuple[torch.Tensor, Any]:
        return self.draw(n, self.generator)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
