"""This process's place in data parallelism, and random draws that match a single-process run.

Every rank keeps the same RNG state and draws the global batch, then keeps its own rows. A run on N
ranks therefore sees exactly the noise, times and data of a one-process run with the same global
batch, which is what makes multi-rank runs testable against single-process ones."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch

from potstill.core.tensors import map_tensors

T = TypeVar("T")


@dataclass
class DataParallel:
    """This process's data-parallel rank and the number of data-parallel ranks, (0, 1) outside a distributed launch
    (ranks of one sequence-parallel group share a rank: they draw the same rows); `main`: this process writes
    files every rank would otherwise write alike."""

    rank: int = 0
    world_size: int = 1
    main: bool = True

    def rows(self, n_local: int) -> slice:
        """This rank's rows of a global batch of `n_local * world_size`."""
        return slice(self.rank * n_local, (self.rank + 1) * n_local)


PLACE = DataParallel()


def set_place(rank: int, world_size: int, main: bool = True) -> None:
    """Set by the engine once the process group exists."""
    PLACE.rank, PLACE.world_size, PLACE.main = rank, world_size, main


def local_batch_size(global_batch: int, key: str = "train.batch_size") -> int:
    """The per-rank share of a global batch; it must divide evenly."""
    if global_batch % PLACE.world_size:
        raise ValueError(f"{key}: {global_batch} does not split evenly over {PLACE.world_size} ranks")
    return global_batch // PLACE.world_size


def micro_batch_size(global_batch: int, grad_accum: int) -> int:
    """Per-rank rows of one micro-batch: the global batch split over ranks and `grad_accum` micro-batches."""
    if grad_accum < 1:
        raise ValueError(f"train.grad_accum: must be at least 1, got {grad_accum}")
    local = local_batch_size(global_batch)
    if local % grad_accum:
        raise ValueError(f"train.batch_size: {global_batch} does not split into {PLACE.world_size} ranks x "
                         f"{grad_accum} micro-batches (grad_accum)")
    return local // grad_accum


def take_rows(value: T, rows: slice) -> T:
    """Rows of a batch: a tensor, or the tensors of a dict, tuple or list; None stays None."""
    return map_tensors(value, lambda tensor: tensor[rows])


def draw_local(draw: Callable[[int], T], n_local: int) -> T:
    """`draw(n)` for the global batch, this rank's rows of it."""
    if PLACE.world_size == 1:
        return draw(n_local)
    return take_rows(draw(n_local * PLACE.world_size), PLACE.rows(n_local))


def randn_like(x: torch.Tensor) -> torch.Tensor:
    """Standard normal noise shaped like the local batch `x`, the same rows a one-process run draws."""
    return draw_local(lambda n: torch.randn((n, *x.shape[1:]), dtype=x.dtype, device=x.device), x.shape[0])
