"""The training backend behind one interface. `PlainEngine` is single-process PyTorch; a DeepSpeed
engine plugs in behind the same calls (prepare, autocast, backward, step, state)."""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from potstill.core.config import OptimConfig
from potstill.core.registry import ENGINES


class NonFiniteError(FloatingPointError):
    """A loss or gradient became NaN or infinite; the message names the model, the tensor and the step."""


@dataclass
class Trainable:
    """A trained model with its optimizer and clipping threshold."""

    name: str
    module: nn.Module
    optimizer: torch.optim.Optimizer
    grad_clip: float | None


class Engine(ABC):
    """Wraps trained models with their optimizers and runs backward and optimizer steps."""

    device: torch.device

    @abstractmethod
    def prepare(self, name: str, module: nn.Module, optim: OptimConfig) -> Trainable: ...

    @abstractmethod
    def autocast(self) -> contextlib.AbstractContextManager: ...

    @abstractmethod
    def backward(self, loss: torch.Tensor, what: str) -> None: ...

    @abstractmethod
    def step(self, trainable: Trainable) -> float: ...


@dataclass
class PlainOptions:
    device: Literal["auto", "cpu", "cuda"] = "auto"


class PlainEngine(Engine):
    """Single-process PyTorch: AdamW, global-norm clipping, optional bf16 autocast."""

    def __init__(self, options: PlainOptions | None = None, bf16: bool = False) -> None:
        options = options or PlainOptions()
        name = options.device
        if name == "auto":
            name = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(name)
        self.bf16 = bf16
        self.step_index = 0

    def prepare(self, name: str, module: nn.Module, optim: OptimConfig) -> Trainable:
        params = [p for p in module.parameters() if p.requires_grad]
        if not params:
            raise ValueError(f"{name}: has no trainable parameters")
        optimizer = torch.optim.AdamW(params, lr=optim.lr, betas=tuple(optim.betas),
                                      weight_decay=optim.weight_decay, eps=optim.eps)
        return Trainable(name, module, optimizer, optim.grad_clip)

    def autocast(self) -> contextlib.AbstractContextManager:
        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def backward(self, loss: torch.Tensor, what: str) -> None:
        if not torch.isfinite(loss):
            raise NonFiniteError(f"{what} loss is {loss.item()} at step {self.step_index}")
        loss.backward()

    def step(self, trainable: Trainable) -> float:
        params = [p for group in trainable.optimizer.param_groups for p in group["params"]]
        grads = [p.grad for p in params if p.grad is not None]
        norm = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros(())
        if not torch.isfinite(norm):
            bad = next(n for n, p in trainable.module.named_parameters()
                       if p.grad is not None and not torch.isfinite(p.grad).all())
            raise NonFiniteError(f"{trainable.name}: gradient of {bad} is not finite at step {self.step_index}")
        if trainable.grad_clip:
            torch.nn.utils.clip_grads_with_norm_(params, trainable.grad_clip, norm)
        trainable.optimizer.step()
        trainable.optimizer.zero_grad(set_to_none=True)
        return norm.item()


ENGINES.register("plain", PlainOptions)(PlainEngine)
