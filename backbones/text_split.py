"""A text encoder split across ranks (`text_encoder.shard: true` on a ZeRO-3 engine), as the teacher is: built one
parameter at a time into partitions (core/zero_build.py), run under the engine's gathering hooks, and encoding
collectively (backbones/prompt_cache.py), since every rank must take part in each forward. A T5-XXL encoder is
about 4.7B parameters (SD3's and Flux's): whole, it would sit on every rank."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from potstill.backbones.prompt_cache import prompt_exchange_group


@dataclass
class TextSplit:
    """How an engine splits a text encoder: its `zero.Init`, the memory budget a share must fit, the ranks'
    prompt exchange group (backbones/prompt_cache.py), its device."""

    engine: Any
    partition: Any
    budget: int | None
    exchange: Any

    @property
    def device(self) -> torch.device:
        return self.engine.device

    def prepare(self, module: nn.Module) -> nn.Module:
        """The engine's gathering hooks on a partitioned module, so that its forwards gather each layer."""
        return self.engine.prepare_frozen("text_encoder", module, True)


def text_split(context: Any, shard: bool | None = None) -> TextSplit | None:
    """The split a run's `text_encoder.shard` asks for (or `shard`: a teacher folder's own encoders follow
    `teacher.shard`); None when it does not, when the engine keeps models whole (plain runs), or outside a run
    (`potstill data embed`)."""
    engine = getattr(context, "engine", None)
    if shard is None:
        section = getattr(getattr(context, "config", None), "text_encoder", None)
        shard = section is not None and section.shard
    if engine is None or not shard:
        return None
    partition = engine.partition_for(True, torch.float32)
    if partition is None:
        return None
    return TextSplit(engine, partition, engine.memory_budget(), prompt_exchange_group())
