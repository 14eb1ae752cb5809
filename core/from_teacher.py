"""Components made from the teacher: the few-step student initialised as a copy of it (DMD2, SiD) and
the fake score initialised as a copy of it (DMD2's guidance model, SiD's f_psi)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from potstill.core.config import ConfigError
from potstill.core.denoiser import Denoiser
from potstill.core.generator import DenoiserGenerator, NoisedRealGenerator
from potstill.core.init_from import load_init_weights
from potstill.core.lora import LoRAOptions, check_engine_shares, lora_copy
from potstill.core.registry import FAKE_SCORES, GENERATORS
from potstill.core.time_draws import TimeOptions


@dataclass
class DenoiserGeneratorOptions:
    """`times` are the student's input noise levels in the teacher's t units, one per step
    (EDM: [80.0] for DMD2's one-step, [2.5] for SiD's sigma_init). `init_from`: a run directory whose EMA
    student these weights start from (APT after an ODE initialisation), instead of the teacher's.
    `inputs: real` trains on real samples noised to a time drawn by `gen_t` (ARC; needs `real_data`), positions
    uniform in [0, 1) by default, `{t_low: 1, t_high: 1}` for pure noise; sampling still starts from noise;
    `condition_dropout` (with `inputs: real`) drops that share of its conditions to the null one on its own steps
    (ARC's anchor: 0.1). `lora`: train low-rank adapters on the teacher's own frozen weights instead of a full copy
    (core/lora.py)."""

    times: list[float] = field(default_factory=lambda: [80.0])
    guidance: float = 1.0
    init_from: str | None = None
    inputs: Literal["noise", "real"] = "noise"
    gen_t: TimeOptions = field(default_factory=lambda: TimeOptions(t_low=0.0, t_high=1.0, t_grid=0))
    condition_dropout: float = 0.0
    lora: LoRAOptions | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.condition_dropout < 1:
            raise ConfigError(f"generator.condition_dropout: must be in [0, 1), got {self.condition_dropout}")
        if self.condition_dropout and self.inputs != "real":
            raise ConfigError("generator.condition_dropout: only a student of noised real samples (inputs: real) "
                              "drops its conditions")


def copy_teacher(context, key: str) -> Denoiser:
    """A trainable copy of the teacher, made as the engine trains it (under ZeRO-3 one parameter at a time)."""
    teacher = context.teacher
    if not isinstance(teacher, Denoiser) or teacher.backbone is None:
        raise ValueError(f"{key}: this teacher has no network to copy; choose another kind")
    return context.engine.trained_copy(teacher)


def teacher_network(context, lora: LoRAOptions | None, section: str) -> Denoiser:
    """A full trainable copy of the teacher, or with `lora` its LoRA copy on the teacher's own weights."""
    if lora is None:
        return copy_teacher(context, f"{section}.kind")
    check_engine_shares(context.config, f"{section}.lora")
    return lora_copy(context.teacher, lora, f"{section}.lora")


@dataclass
class TeacherCopyOptions:
    """`lora`: the fake score as LoRA adapters on the teacher's own frozen weights (core/lora.py); `init_from`: a
    run directory or checkpoint whose fake score this one starts from (SiDA fine-tuning a SiD run continues its
    fake score too, Zhou et al. 2025)."""

    lora: LoRAOptions | None = None
    init_from: str | None = None


@GENERATORS.register("denoiser", DenoiserGeneratorOptions)
def build_denoiser_generator(options: DenoiserGeneratorOptions, context) -> DenoiserGenerator:
    denoiser = teacher_network(context, options.lora, "generator")
    if options.inputs == "real":
        generator = NoisedRealGenerator(denoiser, options.times, options.gen_t, options.guidance,
                                        options.condition_dropout)
    else:
        generator = DenoiserGenerator(denoiser, options.times, options.guidance)
    if options.init_from:
        load_init_weights(generator, options.init_from)
    return generator


@FAKE_SCORES.register("teacher_copy", TeacherCopyOptions)
def build_teacher_copy(options: TeacherCopyOptions | None, context) -> Denoiser:
    fake = teacher_network(context, options.lora if options is not None else None, "fake_score")
    if options is not None and options.init_from:
        load_init_weights(fake, options.init_from, "fake_score", "fake_score.init_from", "fake score")
    return fake
