"""Linear layers that let ZeRO-3 free each gathered weight after its forward. ZeRO-3 gathers a layer's weights as
the layer runs and drops them after; but autograd keeps what F.linear saves for backward (a transposed view of the
weight), so at 2 ranks a rank held every gathered layer of the model from forward to backward (measured: 0.64 of
the critic's 0.77 GiB of live tensors, benchmarks/deepspeed_memory.py). DeepSpeed's own linear function saves the
parameter itself, whose storage goes when ZeRO re-partitions it, and gathers it again in backward. DeepSpeed
installs it only inside an entered `zero.Init`, which potstill's parameter-by-parameter build does not enter."""

from __future__ import annotations

import torch
import torch.nn.functional as F

TORCH_LINEAR = F.linear


def linear(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear, through DeepSpeed's ZeRO-3 function for a partitioned weight under grad."""
    if torch.is_grad_enabled() and hasattr(weight, "ds_id"):
        from deepspeed.runtime.zero.linear import zero3_linear_wrap

        return zero3_linear_wrap(input, weight, bias)
    return TORCH_LINEAR(input, weight, bias)


def install() -> None:
    """Route every F.linear call of this process through `linear` (nn.Linear and nn.MultiheadAttention look it up
    at call time). Calls on weights that are not partitioned are unchanged."""
    F.linear = linear


def uninstall() -> None:
    F.linear = TORCH_LINEAR
