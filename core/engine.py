"""The training backend behind one interface. `PlainEngine` is single-process PyTorch; the DeepSpeed
engine (`core/deepspeed_engine.py`) answers the same calls over many ranks.

A `Trainable` is one optimizer step's worth of models: the generator alone, or the critic (fake score
and discriminator, one step as in DMD2's guidance model), each part with its own AdamW settings."""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from potstill.core import parallel
from potstill.core.config import OptimConfig, TrainConfig
from potstill.core.registry import ENGINES


class NonFiniteError(FloatingPointError):
    """A loss or gradient became NaN or infinite; the message names the model, the tensor and the step."""


@dataclass
class Part:
    """One model inside a Trainable, with its optimizer settings."""

    name: str
    module: nn.Module
    optim: OptimConfig

    def trained_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.module.parameters() if p.requires_grad]


@dataclass
class Trainable:
    """Models updated by one optimizer step; `backend` is the engine's own handle (optimizer or engine)."""

    name: str
    parts: list[Part]
    backend: Any


def adamw_groups(parts: list[Part]) -> list[dict]:
    """One AdamW parameter group per part, with that part's settings."""
    groups = []
    for part in parts:
        params = part.trained_parameters()
        if not params:
            raise ValueError(f"{part.name}: has no trainable parameters")
        o = part.optim
        groups.append({"params": params, "lr": o.lr, "betas": tuple(o.betas), "weight_decay": o.weight_decay,
                       "eps": o.eps})
    return groups


def check_finite_loss(loss: torch.Tensor, what: str, step: int) -> None:
    if not torch.isfinite(loss):
        raise NonFiniteError(f"{what} loss is {loss.item()} at step {step}")


class Engine(ABC):
    """Wraps trained models with their optimizers, places frozen ones, and runs backward and steps."""

    device: torch.device
    rank: int = 0
    world_size: int = 1
    step_index: int = 0
    steps_parts_alone: bool = True      # a part without gradients is left untouched by step()

    def __init__(self, train: TrainConfig | None = None) -> None:
        self.train = train or TrainConfig()

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def micro_batch(self) -> int:
        """Rows of one micro-batch on this rank."""
        return parallel.micro_batch_size(self.train.batch_size, self.train.grad_accum)

    @abstractmethod
    def prepare(self, name: str, parts: list[Part]) -> Trainable:
        """Optimizer (one parameter group per part) and, for DeepSpeed, the engine around the parts."""

    @abstractmethod
    def prepare_frozen(self, name: str, module: nn.Module, shard: bool) -> nn.Module:
        """A frozen model on the device; with `shard`, partitioned across ranks (ZeRO stage 3)."""

    @abstractmethod
    def backward(self, trainable: Trainable, loss: torch.Tensor, what: str) -> None:
        """Accumulate the gradient of one micro-batch's loss (already a per-micro-batch mean)."""

    @abstractmethod
    def step(self, trainable: Trainable) -> dict[str, float]:
        """Clip and apply the accumulated gradients; returns the gradient norm of each part (DeepSpeed: of the
        whole Trainable, clipped jointly)."""

    def autocast(self) -> contextlib.AbstractContextManager:
        if not self.train.bf16:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def parameter_share(self, module: nn.Module) -> tuple[int, int]:
        """(parameters held by this rank, parameters in the model)."""
        total = sum(p.numel() for p in module.parameters())
        return total, total

    def partitions_trained(self) -> bool:
        """Whether trained models' parameters are partitioned across ranks (ZeRO stage 3)."""
        return False

    def full_state_dict(self, module: nn.Module) -> dict[str, torch.Tensor]:
        """The whole model's tensors on the CPU, on the main rank (other ranks get an empty dict)."""
        return {k: v.detach().cpu() for k, v in module.state_dict().items()}

    def load_full_state_dict(self, module: nn.Module, state: dict[str, torch.Tensor]) -> None:
        module.load_state_dict(state)

    def save_training_state(self, folder: Path, trainables: list[Trainable]) -> dict:
        """Optimizer state: returned for `state.pt`, or written under `folder` by the engine itself."""
        return {t.name: t.backend.state_dict() for t in trainables}

    def load_training_state(self, folder: Path, trainables: list[Trainable], saved: dict) -> None:
        for t in trainables:
            if t.name not in saved:
                raise KeyError(f"{folder}: checkpoint has no optimizer state for {t.name!r}")
            t.backend.load_state_dict(saved[t.name])

    def reduce_metrics(self, metrics: dict[str, float]) -> dict[str, float]:
        """Metrics averaged over ranks (every rank must call this at the same step)."""
        return metrics

    def barrier(self) -> None:  # noqa: B027  (one process: nothing to wait for)
        """Wait for every rank."""

    def broadcast(self, value: Any) -> Any:
        """The main rank's `value` on every rank."""
        return value

    def gather(self, value: Any) -> list[Any]:
        """Every rank's `value`, in rank order, on every rank."""
        return [value]

    def sum_metrics(self, metrics: dict[str, float]) -> dict[str, float]:
        """Counters summed over ranks (every rank must call this at the same step)."""
        return metrics


@dataclass
class PlainOptions:
    device: Literal["auto", "cpu", "cuda"] = "auto"


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


class PlainEngine(Engine):
    """Single-process PyTorch: AdamW, gradient accumulation, per-model global-norm clipping, bf16 autocast."""

    def __init__(self, options: PlainOptions | None = None, train: TrainConfig | None = None) -> None:
        super().__init__(train)
        self.device = resolve_device((options or PlainOptions()).device)

    def prepare(self, name: str, parts: list[Part]) -> Trainable:
        return Trainable(name, parts, torch.optim.AdamW(adamw_groups(parts)))

    def prepare_frozen(self, name: str, module: nn.Module, shard: bool) -> nn.Module:
        return module.to(self.device)

    def backward(self, trainable: Trainable, loss: torch.Tensor, what: str) -> None:
        check_finite_loss(loss, what, self.step_index)
        (loss / self.train.grad_accum).backward()

    def step(self, trainable: Trainable) -> dict[str, float]:
        norms = {}
        for part in trainable.parts:
            params = part.trained_parameters()
            grads = [p.grad for p in params if p.grad is not None]
            norm = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros(())
            if not torch.isfinite(norm):
                bad = next(n for n, p in part.module.named_parameters()
                           if p.grad is not None and not torch.isfinite(p.grad).all())
                raise NonFiniteError(f"{part.name}: gradient of {bad} is not finite at step {self.step_index}")
            if part.optim.grad_clip:
                torch.nn.utils.clip_grads_with_norm_(params, part.optim.grad_clip, norm)
            norms[part.name] = norm.item()
        trainable.backend.step()
        trainable.backend.zero_grad(set_to_none=True)
        return norms


ENGINES.register("plain", PlainOptions)(PlainEngine)
