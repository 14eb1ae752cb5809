"""Run under `deepspeed --num_gpus 2`: a ZeRO-3 model of linear layers and an nn.MultiheadAttention against its
whole copy. Each rank writes how many gathered weights autograd still holds after a forward (with potstill's
linear installed and without), how far the ZeRO-3 gradients are from the whole copy's, and what R1's penalty,
which differentiates the model twice, meets on it and on a frozen ZeRO-3 copy (a sharded teacher): the second
backward reads weights ZeRO-3 has released."""

import copy
import json
import sys
from pathlib import Path

import deepspeed
import torch
from deepspeed.utils import safe_get_full_grad
from torch import nn
from torch.multiprocessing.reductions import StorageWeakRef
from torch.nn.attention import SDPBackend, sdpa_kernel

from potstill.core import zero3_linear
from potstill.core.adversarial.losses import r1_penalty
from potstill.core.deepspeed_engine import DeepSpeedEngine, DeepSpeedOptions

WIDTH = 128


class Critic(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(16, WIDTH), nn.GELU(), nn.Linear(WIDTH, WIDTH), nn.GELU(),
                                    nn.Linear(WIDTH, WIDTH), nn.GELU())
        self.attention = nn.MultiheadAttention(WIDTH, 4, batch_first=True)
        self.head = nn.Linear(WIDTH, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.layers(x)
        h = h + self.attention(h, h, h, need_weights=False)[0]
        return self.head(torch.tanh(h)).sum(dim=(1, 2))


def gathered_weights_held(model: nn.Module, x: torch.Tensor, weight_bytes: set[int]) -> int:
    """Storages of whole-weight size that autograd saved in a forward and still holds after it."""
    saved: list[StorageWeakRef] = []

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        if tensor.untyped_storage().nbytes() in weight_bytes:
            saved.append(StorageWeakRef(tensor.untyped_storage()))
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(x)
    held = len({ref.cdata for ref in saved if not ref.expired()})
    del out
    return held


def gradient_gap(engine, whole: nn.Module) -> float:
    gaps = [(safe_get_full_grad(p) - q.grad).abs().max().item()
            for p, q in zip(engine.module.parameters(), whole.parameters(), strict=True)]
    whole.zero_grad()
    return max(gaps)


def r1_error(run) -> str:
    """What R1's penalty and its backward raise ('' if nothing)."""
    try:
        run()
    except RuntimeError as error:
        return str(error)
    return ""


def main(out: Path) -> None:
    ds = DeepSpeedEngine(DeepSpeedOptions(zero_stage=3))
    torch.manual_seed(0)
    whole = Critic()
    model = copy.deepcopy(whole)
    engine, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.0), config={
        "train_micro_batch_size_per_gpu": 4, "zero_optimization": {"stage": 3,
                                                                   "stage3_param_persistence_threshold": 0},
        "zero_allow_untested_optimizer": True, "steps_per_print": 2**62})
    deepspeed.zero.register_external_parameter(model.attention, model.attention.out_proj.weight)
    deepspeed.zero.register_external_parameter(model.attention, model.attention.out_proj.bias)
    x = torch.randn(4, 6, 16)
    weight_bytes = {p.numel() * 4 for p in whole.parameters() if p.dim() == 2}
    report = {"rank": ds.rank, "weights": sum(p.dim() == 2 for p in whole.parameters())}

    zero3_linear.uninstall()
    report["held_with_torch_linear"] = gathered_weights_held(model, x, weight_bytes)
    zero3_linear.install()
    report["held"] = gathered_weights_held(model, x, weight_bytes)

    engine.backward(model(x).square().mean())
    whole(x).square().mean().backward()
    report["loss_gradient_gap"] = gradient_gap(engine, whole)
    engine.step()

    frozen = copy.deepcopy(whole).requires_grad_(False)
    deepspeed.initialize(model=frozen, config={"train_micro_batch_size_per_gpu": 4, "steps_per_print": 2**62,
                                               "zero_optimization": {"stage": 3,
                                                                     "stage3_param_persistence_threshold": 0}})
    with sdpa_kernel(SDPBackend.MATH):     # the fused CPU kernel has no second derivative
        report["r1_error"] = r1_error(lambda: engine.backward(r1_penalty(model, x)))
        report["r1_error_frozen"] = r1_error(lambda: r1_penalty(frozen, x).backward())
    (out / f"rank{ds.rank}.json").write_text(json.dumps(report))
    ds.close()


if __name__ == "__main__":
    main(Path(next(a for a in sys.argv[1:] if not a.startswith("--local_rank"))))
