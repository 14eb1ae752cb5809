"""The training backend behind one interface. `PlainEngine` is single-process PyTorch; the DeepSpeed
engine (`core/deepspeed_engine.py`) answers the same calls over many ranks.

A `Trainable` is one optimizer step's worth of models: the generator alone, or the critic (fake score
and discriminator, one step as in DMD2's guidance model), each part with its own AdamW settings."""

from __future__ import annotations

import contextlib
import copy
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from potstill.core import parallel
from potstill.core.config import ConfigError, OptimConfig, TrainConfig
from potstill.core.memory_budget import GIB, free_memory
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


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


NORMS = (nn.LayerNorm, nn.GroupNorm, nn.RMSNorm, nn.modules.batchnorm._NormBase)


def _input_in_weight_dtype(layer: nn.Module, args: tuple) -> tuple:
    return (args[0].to(layer.weight.dtype), *args[1:])


def feed_norms_their_dtype(module: nn.Module, device: torch.device) -> None:
    """On a CPU, the bf16 norm layers of a model take their input in bf16: CPU autocast leaves layer_norm and
    group_norm to the caller, and they refuse an fp32 input with bf16 weights (CUDA autocast runs them in fp32)."""
    if device.type != "cpu":
        return
    for sub in module.modules():
        weight = getattr(sub, "weight", None)
        if isinstance(sub, NORMS) and weight is not None and weight.dtype == torch.bfloat16 and \
                not getattr(sub, "takes_bf16_input", False):
            sub.register_forward_pre_hook(_input_in_weight_dtype)
            sub.takes_bf16_input = True


def cast_parameters(module: nn.Module, dtype: torch.dtype, device: torch.device) -> nn.Module:
    """A model's floating parameters in `dtype`; its buffers keep theirs (schedule tables and student times stay
    exact), as DeepSpeed's own mixed-precision cast does."""
    for parameter in module.parameters():
        if parameter.is_floating_point():
            parameter.data = parameter.data.to(dtype)
    feed_norms_their_dtype(module, device)
    return module


def check_finite_loss(loss: torch.Tensor, what: str, step: int) -> None:
    if not torch.isfinite(loss):
        raise NonFiniteError(f"{what} loss is {loss.item()} at step {step}")


def first_nonfinite(named: list[tuple[str, torch.Tensor]]) -> str | None:
    """The name of the first tensor holding a NaN or infinity, or None. One fused norm decides whether to look,
    so the common, finite case costs one synchronisation."""
    tensors = [t for _, t in named if t.is_floating_point() and t.numel()]
    if not tensors or torch.isfinite(torch.nn.utils.get_total_norm(tensors)):
        return None
    return next((name for name, t in named if t.is_floating_point() and not torch.isfinite(t).all()), None)


def explain_nonfinite_norm(part: Part, norm: float, step: int) -> str:
    """Why a part's gradient norm is not finite: the first non-finite gradient, or, when every gradient is
    finite and only their global norm overflowed, the largest one."""
    grads = [(n, p.grad) for n, p in part.module.named_parameters() if p.grad is not None]
    bad = first_nonfinite(grads)
    if bad is not None:
        return f"{part.name}: gradient of {bad} is not finite at step {step}"
    name, largest = max(((n, g.abs().max().item()) for n, g in grads), key=lambda item: item[1])
    return (f"{part.name}: the global gradient norm overflowed to {norm} at step {step} though every gradient is "
            f"finite; the largest is {name} (max |g| = {largest:.3g}); lower optim.{part.name}.lr or the loss scale")


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
    def prepare_frozen(self, name: str, module: nn.Module, shard: bool,
                       dtype: torch.dtype = torch.float32) -> nn.Module:
        """A frozen model on the device with its parameters in `dtype`; with `shard`, partitioned across ranks
        (ZeRO stage 3)."""

    @abstractmethod
    def backward(self, trainable: Trainable, loss: torch.Tensor, what: str) -> None:
        """Accumulate the gradient of one micro-batch's loss (already a per-micro-batch mean)."""

    @abstractmethod
    def step(self, trainable: Trainable) -> dict[str, float]:
        """Clip and apply the accumulated gradients; returns the gradient norm of each part (DeepSpeed: of the
        whole Trainable, clipped jointly)."""

    def autocast(self) -> contextlib.AbstractContextManager:
        """bfloat16 matrix products in every mode but fp32 (with bf16 parameters, autocast is also what lets them
        meet the fp32 noise and data)."""
        if self.train.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def partition_for(self, partitioned: bool, dtype: torch.dtype) -> Any | None:
        """What splits a model's parameters across ranks as they are made (a `deepspeed.zero.Init` in `dtype`),
        when `partitioned` on an engine that partitions (ZeRO-3); None: models are built whole."""
        return None

    def memory_budget(self) -> int | None:
        """Bytes a rank may give a model's parameters: `train.memory_per_rank_gib`, else what is free on the
        device (core/memory_budget.py)."""
        limit = self.train.memory_per_rank_gib
        return int(limit * GIB) if limit is not None else free_memory(self.device)

    def copy_model(self, module: nn.Module, partitioned: bool = False, dtype: torch.dtype | None = None,
                   memo: dict | None = None) -> nn.Module:
        """A copy of `module` with its parameters in `dtype` (None: as they are), split across ranks when
        `partitioned` on an engine that partitions; `memo` as copy.deepcopy's (tensors the copy shares)."""
        copied = copy.deepcopy(module, memo)
        return cast_parameters(copied, dtype, self.device) if dtype is not None else copied

    def trained_copy(self, module: nn.Module) -> nn.Module:
        """A copy of `module` to train (a student or fake score from the teacher), made as the engine trains it:
        partitioned under ZeRO-3, its parameters in bf16 under `train.precision: bf16`."""
        dtype = torch.bfloat16 if self.train.precision == "bf16" else None
        return self.copy_model(module, self.partitions_trained(), dtype).requires_grad_(True).train()

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
            self.apply_optim_settings(t)

    def reduce_metrics(self, metrics: dict[str, float]) -> dict[str, float]:
        """Metrics averaged over ranks (every rank must call this at the same step)."""
        return metrics

    def max_over_ranks(self, value: int) -> int:
        """The largest of every rank's `value` (every rank must call this at the same step)."""
        return value

    def optimizer_groups(self, trainable: Trainable) -> list[dict]:
        """The optimizer's parameter groups, one per part, in the order of `trainable.parts`."""
        return trainable.backend.param_groups

    def apply_optim_settings(self, trainable: Trainable) -> None:
        """Put each part's configured AdamW settings into its parameter group: a loaded optimizer state brings
        the settings it was saved with, and a resume that changed `optim.*` must train with the new ones."""
        for group, part in zip(self.optimizer_groups(trainable), trainable.parts, strict=True):
            o = part.optim
            group.update(lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay, eps=o.eps)

    def local_parameters(self, module: nn.Module) -> list[tuple[str, torch.Tensor]]:
        """This rank's share of a model's trained parameters (all of them in one process)."""
        return [(n, p) for n, p in module.named_parameters() if p.requires_grad]

    def check_updated_parameters(self, trainable: Trainable) -> None:
        """Stop at the update that made a parameter NaN or infinite, naming the model and the tensor, so the
        blow-up is not blamed on the next model whose loss reads it."""
        found = [(part.name, first_nonfinite(self.local_parameters(part.module))) for part in trainable.parts]
        bad = [(name, tensor) for name, tensor in found if tensor is not None]
        if not self.max_over_ranks(int(bool(bad))):
            return
        where = f"{bad[0][0]}: parameter {bad[0][1]}" if bad else ", ".join(p.name for p in trainable.parts)
        raise NonFiniteError(f"{where} is not finite after the {trainable.name} update at step {self.step_index}; "
                             f"the update diverged (lower its optim.*.lr or set optim.*.grad_clip)")

    def barrier(self) -> None:  # noqa: B027  (one process: nothing to wait for)
        """Wait for every rank."""

    def close(self) -> None:  # noqa: B027  (one process: nothing to tear down)
        """End the ranks' communication together, before the process exits (every rank must call this)."""

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
        if self.train.precision == "bf16":
            raise ConfigError("train.precision: bf16 (bf16 parameters, fp32 master weights in the optimizer) is "
                              "DeepSpeed's (engine.kind: deepspeed); the plain engine offers bf16_autocast")
        self.device = resolve_device((options or PlainOptions()).device)

    def prepare(self, name: str, parts: list[Part]) -> Trainable:
        """AdamW over all the parts' tensors at once (`foreach`: PyTorch's default on GPUs, and on a CPU in place
        of its per-tensor loop, whose per-tensor overhead dominates the small toy models' updates)."""
        return Trainable(name, parts, torch.optim.AdamW(adamw_groups(parts), foreach=True))

    def prepare_frozen(self, name: str, module: nn.Module, shard: bool,
                       dtype: torch.dtype = torch.float32) -> nn.Module:
        return cast_parameters(module.to(self.device), dtype, self.device)

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
                raise NonFiniteError(explain_nonfinite_norm(part, norm.item(), self.step_index))
            if part.optim.grad_clip:
                torch.nn.utils.clip_grads_with_norm_(params, part.optim.grad_clip, norm)
            norms[part.name] = norm.item()
        trainable.backend.step()
        trainable.backend.zero_grad(set_to_none=True)
        self.check_updated_parameters(trainable)
        return norms


ENGINES.register("plain", PlainOptions)(PlainEngine)
