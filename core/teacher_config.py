"""The config of `potstill train-teacher`: a registered backbone trained by denoising score matching on a
registered dataset under a registered schedule. YAML with `extends:` and `--set`, validated like run configs."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from potstill.core import registry as reg
from potstill.core.config import (
    AT_LEAST_0,
    AT_LEAST_1,
    EMA_STD,
    FRACTION,
    POSITIVE,
    RULES,
    SECTION_REGISTRIES,
    Component,
    OptimConfig,
    Rule,
    apply_overrides,
    from_dict,
    read_yaml,
)
from potstill.core.denoiser import Prediction
from potstill.core.lr_schedule import Decay, scheduled_lr


@dataclass
class TeacherTrainConfig:
    """AdamW with linear warmup over `warmup_steps` and a `decay` to `final_lr_fraction` of `lr` by `steps`
    (the two multiply); an EMA of the weights is what the teacher file holds (`ema_std`: EDM2's power-function
    EMA in place of the constant `ema_decay`, as in the distillation config).
    `checkpoint_every` 0: only the checkpoint written at the end."""

    steps: int = 1000
    batch_size: int = 256
    lr: float = 1e-3
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 0.0
    warmup_steps: int = 0
    decay: Decay = "none"
    final_lr_fraction: float = 0.1
    grad_clip: float | None = 1.0
    ema_decay: float = 0.999
    ema_std: float | None = None
    seed: int = 0
    log_every: int = 10
    checkpoint_every: int = 0
    keep_checkpoints: int = 2
    progress: bool = True
    device: Literal["auto", "cpu", "cuda"] = "auto"

    def optim(self) -> OptimConfig:
        """The AdamW settings of the one trained model (its lr the peak; `lr_at` scales it per step)."""
        return OptimConfig(lr=self.lr, betas=list(self.betas), weight_decay=self.weight_decay,
                           grad_clip=self.grad_clip)

    def lr_at(self, step: int) -> float:
        """The learning rate of 0-based step `step`."""
        return scheduled_lr(self.lr, step, self.steps, self.warmup_steps, self.decay, self.final_lr_fraction)


@dataclass
class TeacherRunConfig:
    """`label_dropout`: the share of labels replaced by the backbone's null condition (for guidance)."""

    backbone: Component
    schedule: Component
    real_data: Component
    prediction: Prediction
    sigma_data: float = 0.5
    label_dropout: float = 0.1
    codec: Component | None = None      # the teacher models the codec's encoding of the data (mel frames, latents)
    text_encoder: Component | None = None   # embeds the data's captions or prompts; the teacher file records it
    train: TeacherTrainConfig = field(default_factory=TeacherTrainConfig)
    plugins: list[str] = field(default_factory=list)   # modules or .py files imported first (core/plugins.py)


SECTIONS = {"backbone": reg.BACKBONES, "schedule": reg.SCHEDULES, "real_data": reg.DATASETS, "codec": reg.CODECS,
            "text_encoder": reg.TEXT_ENCODERS}
SECTION_REGISTRIES[TeacherRunConfig] = SECTIONS
RULES[TeacherTrainConfig] = {
    **dict.fromkeys(["steps", "batch_size", "log_every", "keep_checkpoints"], AT_LEAST_1),
    **dict.fromkeys(["warmup_steps", "checkpoint_every", "weight_decay"], AT_LEAST_0),
    "lr": POSITIVE, "grad_clip": POSITIVE, "ema_decay": FRACTION, "ema_std": EMA_STD,
    "betas": RULES[OptimConfig]["betas"],
    "final_lr_fraction": Rule(lambda v: 0 <= v <= 1, "in [0, 1]"),
}
RULES[TeacherRunConfig] = {"sigma_data": POSITIVE, "label_dropout": FRACTION}


def load_teacher_config(path: str | Path | None = None, overrides: list[str] | None = None,
                        data: dict | None = None) -> TeacherRunConfig:
    """A TeacherRunConfig from a YAML file (or an already-read mapping) plus `--set` overrides."""
    from potstill.core.plugins import import_config_plugins

    raw = apply_overrides(read_yaml(Path(path)) if path is not None else dict(data or {}), overrides or [], SECTIONS)
    import_config_plugins(raw)
    return from_dict(TeacherRunConfig, raw)
