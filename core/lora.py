"""LoRA students and critics (Hu et al. 2021) through peft: a copy of the teacher whose modules are new but whose
weights are the teacher's own frozen tensors (one copy of the base in memory), with peft's low-rank adapters on
the named Linear layers; only the adapters train, and a checkpoint holds only what is not the teacher's (the base
comes back from the teacher when a run is opened). `merged` folds the adapters into plain weights for export."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from peft import LoraConfig, inject_adapter_in_model
from torch import nn

from potstill.core.config import AT_LEAST_1, RULES, ConfigError, Rule
from potstill.core.denoiser import Denoiser


@dataclass
class LoRAOptions:
    """`rank` r, `alpha` (the update is scaled by alpha / r), `target_modules`: names of the backbone's Linear
    layers to adapt (DiT: qkv and proj of attention, fc1 and fc2 of the MLP), `dropout` on the adapters' input."""

    rank: int = 8
    alpha: float = 8.0
    target_modules: list[str] = field(default_factory=lambda: ["qkv", "proj", "fc1", "fc2"])
    dropout: float = 0.0


RULES[LoRAOptions] = {"rank": AT_LEAST_1, "alpha": Rule(lambda v: v > 0, "greater than 0"),
                      "dropout": Rule(lambda v: 0 <= v < 1, "in [0, 1)")}


def tensors_of(module: nn.Module) -> dict[int, torch.Tensor]:
    """Every parameter and buffer of `module` by id, for a deepcopy that shares them instead of copying."""
    return {id(t): t for t in (*module.parameters(), *module.buffers())}


def lora_copy(teacher: Denoiser, options: LoRAOptions, key: str) -> Denoiser:
    """A teacher copy sharing the teacher's (frozen) tensors, with trainable LoRA adapters on its backbone."""
    if not isinstance(teacher, Denoiser) or teacher.backbone is None:
        raise ValueError(f"{key}: this teacher has no network to adapt; remove the lora section")
    student = copy.deepcopy(teacher, memo=tensors_of(teacher))
    config = LoraConfig(r=options.rank, lora_alpha=options.alpha, target_modules=list(options.target_modules),
                        lora_dropout=options.dropout)
    try:
        inject_adapter_in_model(config, student.backbone)
    except ValueError as error:
        raise ConfigError(f"{key}.target_modules: {options.target_modules} ({str(error).splitlines()[0][:200]})"
                          ) from None
    for name, parameter in student.named_parameters():
        parameter.requires_grad_("lora_" in name)
    return student.train()


def shared_keys(module: nn.Module, teacher: nn.Module) -> set[str]:
    """The state-dict keys of `module` whose tensors are the teacher's own (a LoRA copy's base weights)."""
    owned = {id(t) for t in (*teacher.parameters(), *teacher.buffers())}
    named = dict(module.named_parameters(remove_duplicate=False)) | dict(module.named_buffers(remove_duplicate=False))
    return {name for name, tensor in named.items() if id(tensor) in owned}


def check_engine_shares(config, key: str) -> None:
    """ZeRO-3 partitions each engine's parameters itself, so a base shared with the teacher cannot be sharded."""
    engine = config.engine
    if engine is not None and engine.kind == "deepspeed" and getattr(engine.options, "zero_stage", 0) == 3:
        raise ConfigError(f"{key}: a LoRA copy shares the teacher's weights, which ZeRO-3 would partition twice; "
                          "use engine.zero_stage 2 or less")


def merged(module: nn.Module) -> nn.Module:
    """An independent copy of `module` with every LoRA adapter folded into its base weight (W + (alpha / r) B A)
    and the adapter layers replaced by plain ones: what an export writes, with no peft left in it."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    plain = copy.deepcopy(module)
    adapted = [(name, layer) for name, layer in plain.named_modules() if isinstance(layer, BaseTunerLayer)]
    for name, layer in adapted:
        layer.merge()
        parent_name, _, child = name.rpartition(".")
        setattr(plain.get_submodule(parent_name) if parent_name else plain, child, layer.get_base_layer())
    return plain
