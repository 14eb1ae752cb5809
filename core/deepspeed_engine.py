"""DeepSpeed behind the Engine interface: each Trainable is a DeepSpeed engine (ZeRO 0-3), a frozen
teacher with `shard: true` is a ZeRO-3 engine without optimizer (its parameters split across ranks and
gathered layer by layer in forward and backward), and checkpoints are DeepSpeed's own.

Runs on GPUs with NCCL and on CPUs with gloo (DeepSpeed picks its CPU accelerator when no GPU is there)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from potstill.core import parallel, zero3_linear
from potstill.core.config import AT_LEAST_1, RULES, ConfigError, TrainConfig, deep_merge
from potstill.core.engine import (
    Engine,
    NonFiniteError,
    Part,
    Trainable,
    adamw_groups,
    cast_parameters,
    check_finite_loss,
    feed_norms_their_dtype,
    resolve_device,
)
from potstill.core.host_allocator import fix_mmap_threshold
from potstill.core.registry import ENGINES
from potstill.core.sequence_parallel import SequenceGroup, set_sequence_group
from potstill.core.zero_build import copy_module, held_elements, is_partitioned

DEEPSPEED_CONFIGS = Path(__file__).resolve().parent.parent / "configs" / "deepspeed"
CHECKPOINT_FOLDER = "deepspeed"
TAG = "state"


@dataclass
class DeepSpeedOptions:
    """`zero_stage` for the trained models; `config_file` (a DeepSpeed JSON, looked up as given, then
    under configs/deepspeed/) adds any other DeepSpeed setting beneath the ones potstill sets.
    `sequence_parallel`: ranks that split each clip's frames between them (Ulysses, core/sequence_parallel.py);
    it must divide the number of ranks, and the data-parallel ranks are the groups. `host_mmap_threshold_mib`:
    on CPU ranks, host blocks of at least this size go back to the system when freed (core/host_allocator.py):
    measured, 1 brings 2 ranks' stepping peak below one process's at 1.5x the step time; null (the default) keeps
    glibc's own rising threshold. `memory_efficient_linear`: ZeRO-3 frees each gathered linear weight after its
    forward instead of keeping it for backward (DeepSpeed's linear function, core/zero3_linear.py; DeepSpeed's own
    `mem_efficient_linear`)."""

    zero_stage: Literal[0, 1, 2, 3] = 2
    config_file: str | None = None
    backend: Literal["auto", "gloo", "nccl"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    sequence_parallel: int = 1
    host_mmap_threshold_mib: int | None = None
    memory_efficient_linear: bool = True


RULES[DeepSpeedOptions] = {"host_mmap_threshold_mib": AT_LEAST_1}


def read_deepspeed_json(name: str | None) -> dict:
    if name is None:
        return {}
    path = Path(name)
    if not path.is_file():
        path = DEEPSPEED_CONFIGS / name
    if not path.is_file():
        raise ConfigError(f"engine.config_file: {name} not found (looked in the working folder and "
                          f"{DEEPSPEED_CONFIGS})")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ConfigError(f"engine.config_file: {path} is not valid JSON ({error})") from None


def skip_inference_shm_op(deepspeed: Any) -> None:
    """DeepSpeed JIT-compiles its shared-memory all-reduce at every CPU start (~30 s per venv path), and a
    start killed mid-build leaves a lock on which every later start waits forever. The op serves only
    `inference_all_reduce`, which training never calls, so mark it unavailable and DeepSpeed uses gloo."""
    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def count_whole_gradients_once(module: nn.Module, group_size: int) -> None:
    """Under sequence parallelism the loss is scaled by the group's size, so that DeepSpeed's mean over ranks sums
    the parts of a gradient that a backbone splitting the frames (`splits_sequence`) leaves on each rank. A
    parameter outside such a backbone (a discriminator's head on whole clips) has its whole gradient on every
    rank: its gradient is divided back."""
    split = {id(p) for sub in module.modules() if getattr(sub, "splits_sequence", False) for p in sub.parameters()}
    for parameter in module.parameters():
        if parameter.requires_grad and id(parameter) not in split:
            parameter.register_hook(lambda grad: grad / group_size)


class DeepSpeedEngine(Engine):
    """One DeepSpeed engine per Trainable; global batch split over ranks and micro-batches."""

    steps_parts_alone = False     # ZeRO keeps flat gradient buffers: every part of an engine steps

    def __init__(self, options: DeepSpeedOptions | None = None, train: TrainConfig | None = None) -> None:
        super().__init__(train)
        import deepspeed

        self.deepspeed = deepspeed
        self.options = options or DeepSpeedOptions()
        self.user_config = read_deepspeed_json(self.options.config_file)
        backend = self.options.backend
        if backend == "auto":
            backend = "nccl" if torch.cuda.is_available() else "gloo"
        if not torch.distributed.is_initialized():
            os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
            os.environ.setdefault("MASTER_PORT", "29500")
            os.environ.setdefault("RANK", "0")
            os.environ.setdefault("LOCAL_RANK", "0")
            os.environ.setdefault("WORLD_SIZE", "1")
            if backend == "gloo":
                skip_inference_shm_op(deepspeed)
            deepspeed.init_distributed(dist_backend=backend)
        self.rank = torch.distributed.get_rank()
        self.world_size = torch.distributed.get_world_size()
        self.sequence_parallel = self._sequence_groups(self.options.sequence_parallel)
        parallel.set_place(self.rank // self.sequence_parallel, self.world_size // self.sequence_parallel,
                           self.is_main)
        self.device = resolve_device(self.options.device)
        if self.device.type == "cpu" and self.options.host_mmap_threshold_mib is not None:
            fix_mmap_threshold(self.options.host_mmap_threshold_mib)
        if self.options.memory_efficient_linear:
            zero3_linear.install()
        if self.device.type == "cuda":
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
            torch.cuda.set_device(self.device)
        self._frozen_engines: list[Any] = []

    def _sequence_groups(self, size: int) -> int:
        """Ranks 0..size-1, size..2 size-1, ... split each clip's frames (every rank makes every group)."""
        if size < 1 or self.world_size % size:
            raise ConfigError(f"engine.sequence_parallel: must be at least 1 and divide the {self.world_size} ranks, "
                              f"got {size}")
        if size > 1:
            groups = [torch.distributed.new_group(list(range(first, first + size)))
                      for first in range(0, self.world_size, size)]
            set_sequence_group(SequenceGroup(groups[self.rank // size], self.rank % size, size))
        return size

    def _config(self, stage: int, grad_clip: float | None, bf16: bool) -> dict:
        ours = {
            "bf16": {"enabled": bf16},
            "train_micro_batch_size_per_gpu": self.micro_batch,
            "gradient_accumulation_steps": self.train.grad_accum,
            "gradient_clipping": grad_clip or 0.0,
            "zero_optimization": {"stage": stage},
            "zero_allow_untested_optimizer": True,
            "steps_per_print": 2**62,
            "wall_clock_breakdown": False,
        }
        # sub-groups of 1e7 elements bound the optimizer step's temporaries (Adam on a flat partition makes
        # partition-sized ones; DeepSpeed's default sub-group is 1e9): measured, they were most of the stepping peak
        base = {"zero_optimization": {"stage3_param_persistence_threshold": 0, "sub_group_size": 10**7}}
        return deep_merge(deep_merge(base, self.user_config), ours)

    def prepare(self, name: str, parts: list[Part]) -> Trainable:
        clips = [p.optim.grad_clip for p in parts if p.optim.grad_clip]
        module = parts[0].module if len(parts) == 1 else nn.ModuleDict({p.name: p.module for p in parts})
        if self.train.precision == "bf16":     # DeepSpeed leaves a model's dtypes alone once any part is partitioned
            cast_parameters(module, torch.bfloat16, self.device)
        if self.sequence_parallel > 1:
            count_whole_gradients_once(module, self.sequence_parallel)
        engine, *_ = self.deepspeed.initialize(model=module, optimizer=torch.optim.AdamW(adamw_groups(parts)),
                                               config=self._config(self.options.zero_stage, min(clips, default=None),
                                                                   self.train.precision == "bf16"))
        self._gather_with_their_readers(module)
        return Trainable(name, parts, engine)

    def _gather_with_their_readers(self, module: nn.Module) -> None:
        """nn.MultiheadAttention reads its output projection's weights without calling that layer, so ZeRO-3,
        which gathers a layer's parameters as the layer runs, is told to gather them with the attention."""
        if self.options.zero_stage != 3:
            return
        for sub in module.modules():
            if isinstance(sub, nn.MultiheadAttention):
                for parameter in sub.out_proj.parameters():
                    self.deepspeed.zero.register_external_parameter(sub, parameter)

    def prepare_frozen(self, name: str, module: nn.Module, shard: bool,
                       dtype: torch.dtype = torch.float32) -> nn.Module:
        module = module.to(self.device)
        if shard and any(True for _ in module.parameters()):
            engine, *_ = self.deepspeed.initialize(model=module, config=self._config(3, None, dtype == torch.bfloat16))
            self._frozen_engines.append(engine)
            feed_norms_their_dtype(module, self.device)
            return module
        return cast_parameters(module, dtype, self.device)

    def partition_for(self, partitioned: bool, dtype: torch.dtype) -> Any | None:
        if not partitioned:
            return None
        return self.deepspeed.zero.Init(config_dict_or_path=self._config(3, None, dtype == torch.bfloat16), dtype=dtype)

    def copy_model(self, module: nn.Module, partitioned: bool = False, dtype: torch.dtype | None = None,
                   memo: dict | None = None) -> nn.Module:
        if partitioned:
            dtype = dtype or next(module.parameters(), torch.empty(0)).dtype
        return copy_module(module, self.partition_for(partitioned, dtype), dtype, memo)

    def partitions_trained(self) -> bool:
        return self.options.zero_stage == 3

    def parameter_share(self, module: nn.Module) -> tuple[int, int]:
        local = sum(p.ds_tensor.numel() if is_partitioned(p) else p.numel() for p in module.parameters())
        total = sum(p.ds_numel if is_partitioned(p) else p.numel() for p in module.parameters())
        return local, total

    def backward(self, trainable: Trainable, loss: torch.Tensor, what: str) -> None:
        check_finite_loss(loss, what, self.step_index)
        engine = trainable.backend
        start_micro_step = getattr(engine.optimizer, "clear_backward_seen_flag", None)
        if start_micro_step is not None:
            start_micro_step()   # what DeepSpeed's engine.forward() does; potstill calls the models' own methods
        # a sequence group's ranks each hold a part of one gradient: DeepSpeed's mean over ranks must be their sum
        engine.backward(loss * self.sequence_parallel)
        if not engine.is_gradient_accumulation_boundary():
            engine.step()

    def step(self, trainable: Trainable) -> dict[str, float]:
        engine = trainable.backend
        engine.step()
        norm = engine.get_global_grad_norm()
        norm = float(norm) if norm is not None else 0.0
        if norm != norm or norm in (float("inf"), float("-inf")):
            names = ", ".join(p.name for p in trainable.parts)
            raise NonFiniteError(f"{names}: gradient norm is {norm} at step {self.step_index} "
                                 "(DeepSpeed has applied it; resume from the last checkpoint)")
        self.check_updated_parameters(trainable)
        return {trainable.parts[0].name if len(trainable.parts) == 1 else trainable.name: norm}

    def full_state_dict(self, module: nn.Module) -> dict[str, torch.Tensor]:
        state = {}
        for key, tensor in module.state_dict(keep_vars=True).items():
            if is_partitioned(tensor):
                with self.deepspeed.zero.GatheredParameters([tensor]):
                    if self.is_main:
                        state[key] = tensor.detach().cpu().clone()
            elif self.is_main:
                state[key] = tensor.detach().cpu().clone()
        return state

    def load_full_state_dict(self, module: nn.Module, state: dict[str, torch.Tensor]) -> None:
        own = module.state_dict(keep_vars=True)
        missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        if missing or unexpected:
            raise KeyError(f"weights do not match the model: missing {missing[:3]}, unexpected {unexpected[:3]}")
        for key, tensor in own.items():
            if is_partitioned(tensor):
                with self.deepspeed.zero.GatheredParameters([tensor], modifier_rank=0), torch.no_grad():
                    tensor.copy_(state[key])
            else:
                with torch.no_grad():
                    tensor.copy_(state[key])

    def save_training_state(self, folder: Path, trainables: list[Trainable]) -> dict:
        for t in trainables:
            t.backend.save_checkpoint(str(folder / CHECKPOINT_FOLDER / t.name), tag=TAG, save_latest=False)
        return {}

    def load_training_state(self, folder: Path, trainables: list[Trainable], saved: dict) -> None:
        for t in trainables:
            path = folder / CHECKPOINT_FOLDER / t.name
            if not (path / TAG).is_dir():
                raise FileNotFoundError(f"{path}: no DeepSpeed checkpoint for {t.name!r}; was the run trained with "
                                        "engine.kind deepspeed?")
            t.backend.load_checkpoint(str(path), tag=TAG, load_optimizer_states=True, load_lr_scheduler_states=False)
            self.apply_optim_settings(t)

    def optimizer_groups(self, trainable: Trainable) -> list[dict]:
        return trainable.backend.optimizer.param_groups

    def local_parameters(self, module: nn.Module) -> list[tuple[str, torch.Tensor]]:
        return [(n, held_elements(p)) for n, p in module.named_parameters() if p.requires_grad]

    def max_over_ranks(self, value: int) -> int:
        box = torch.tensor([value], dtype=torch.int64, device=self.device)
        torch.distributed.all_reduce(box, op=torch.distributed.ReduceOp.MAX)
        return int(box.item())

    def reduce_metrics(self, metrics: dict[str, float]) -> dict[str, float]:
        if not metrics:
            return {}
        keys = sorted(metrics)
        values = torch.tensor([float(metrics[k]) for k in keys], dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(values)
        return {k: (v / self.world_size).item() for k, v in zip(keys, values, strict=True)}

    def barrier(self) -> None:
        torch.distributed.barrier()

    def close(self) -> None:
        """Meet at a barrier, then destroy the process group: a rank that exits with gloo's threads still
        running can abort in the C++ runtime ("terminate called without an active exception")."""
        zero3_linear.uninstall()
        if torch.distributed.is_initialized():
            torch.distributed.barrier()
            torch.distributed.destroy_process_group()

    def broadcast(self, value: Any) -> Any:
        box = [value]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, value: Any) -> list[Any]:
        values = [None] * self.world_size
        torch.distributed.all_gather_object(values, value)
        return values

    def sum_metrics(self, metrics: dict[str, float]) -> dict[str, float]:
        """Counters summed over data-parallel ranks (the ranks of a sequence group count the same rows)."""
        return {k: v * parallel.PLACE.world_size for k, v in self.reduce_metrics(metrics).items()}


ENGINES.register("deepspeed", DeepSpeedOptions)(DeepSpeedEngine)
