"""Ulysses sequence parallelism (Jacobs et al. 2023, DeepSpeed-Ulysses): the frames of a clip are split across the
ranks of a sequence group; around each attention DeepSpeed's `DistributedAttention` trades the frame split for a
head split with one all-to-all, so each rank attends over the whole sequence for its share of heads (the same mask
and KV cache as one rank), and trades back. A backbone gathers its output, so objectives see whole clips on every
rank of the group, all of which draw the same rows (`engine.sequence_parallel`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class SequenceGroup:
    """The ranks that share one clip's frames: this process's place in them and the process group."""

    group: Any
    rank: int
    size: int

    def frames(self, total: int) -> slice:
        """This rank's frames of a clip of `total` frames (an even split)."""
        if total % self.size:
            raise ValueError(f"engine.sequence_parallel: {total} frames do not split evenly over {self.size} ranks; "
                             "choose a frame count (and generator.chunk_frames when streaming) divisible by it")
        share = total // self.size
        return slice(self.rank * share, (self.rank + 1) * share)


GROUP: SequenceGroup | None = None


def set_sequence_group(group: SequenceGroup | None) -> None:
    """Set by the engine when `engine.sequence_parallel` > 1."""
    global GROUP
    GROUP = group


class GatherAlong(torch.autograd.Function):
    """Every rank's piece of a tensor joined along `dim`, in rank order. Every rank of the group goes on with the
    same whole tensor to the same loss, so the gradient of its own piece is the matching slice of its own gradient:
    the backward takes that slice and communicates nothing."""

    @staticmethod
    def forward(ctx, piece: torch.Tensor, dim: int, group: SequenceGroup) -> torch.Tensor:
        ctx.dim, ctx.rank, ctx.length = dim, group.rank, piece.shape[dim]
        pieces = [torch.empty_like(piece) for _ in range(group.size)]
        torch.distributed.all_gather(pieces, piece.contiguous(), group=group.group)
        return torch.cat(pieces, dim)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad.narrow(ctx.dim, ctx.rank * ctx.length, ctx.length), None, None


def gather_along(piece: torch.Tensor, dim: int, group: SequenceGroup) -> torch.Tensor:
    return GatherAlong.apply(piece, dim, group)


def distributed_attention(local: Callable[..., torch.Tensor], q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                          group: SequenceGroup, *args: Any) -> torch.Tensor:
    """`local(q, k, v, *args)` over the whole sequence for this rank's heads: q, k, v are [B, N / size, heads, d]
    (this rank's tokens, every head) and so is the result; `local` gets [B, N, heads / size, d]."""
    from deepspeed.sequence.layer import DistributedAttention

    attention = DistributedAttention(local, group.group, scatter_idx=2, gather_idx=1)
    return attention(q, k, v, 0, None, *args)
