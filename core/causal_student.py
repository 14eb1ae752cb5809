"""The `causal_rollout` generator: a copy of a bidirectional teacher made block-causal (the weights are the
teacher's, unchanged; only the attention mask differs), streaming chunk by chunk (reference §9)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from potstill.core.causal import CachePolicy
from potstill.core.from_teacher import copy_teacher
from potstill.core.init_from import load_init_weights
from potstill.core.registry import GENERATORS
from potstill.core.rollout import CausalRolloutGenerator, Inputs, Recipe


@dataclass
class CausalRolloutOptions:
    """`times`: the student's step times per chunk, in the teacher's t units (flow: 1 is noise). `context_noise`:
    the t at which a finished chunk is re-run to write its K/V (0: clean, CausVid and Self-Forcing).
    `grad_frames`: only the chunks holding the last this-many frames carry grad in training (null: all).
    `cache`: window and sink frames a chunk attends to, and what happens past `max_frames` (null: the teacher's
    clip length, for modes none and segment).
    `init_from`: a run directory whose EMA student these weights start from (e.g. an ODE initialisation).
    `recipe`: how training inputs are made, `self_forcing` (a rollout with the real cache) or
    `diffusion_forcing` (CausVid: a clip noised per chunk; `clean_chunks` adds t = 0). `inputs`: that clip is
    the student's own (`own`, backward simulation) or a real one from `real_data` (`real`, CausVid's config).
    `rollout_frames`: Self-Forcing's training rollouts stream up to this many frames and train on a clip-long
    window at a drawn place in them (Self-Forcing++; null: the clip alone); needs a cache that holds them
    (mode rolling or segment, or max_frames)."""

    times: list[float] = field(default_factory=lambda: [1.0, 0.75, 0.5, 0.25])
    chunk_frames: int = 2
    context_noise: float = 0.0
    grad_frames: int | None = None
    cache: CachePolicy = field(default_factory=CachePolicy)
    init_from: str | None = None
    recipe: Recipe = "self_forcing"
    clean_chunks: bool = True
    inputs: Inputs = "own"
    rollout_frames: int | None = None


@GENERATORS.register("causal_rollout", CausalRolloutOptions)
def build_causal_rollout(options: CausalRolloutOptions, context) -> CausalRolloutGenerator:
    if options.chunk_frames < 1:
        raise ValueError(f"generator.chunk_frames: must be at least 1, got {options.chunk_frames}")
    student = copy_teacher(context, "generator.kind")
    if not hasattr(student.backbone, "new_cache"):
        raise ValueError(f"generator.kind: causal_rollout needs a causal backbone (video_dit); the teacher's is "
                         f"{type(student.backbone).__name__}")
    policy = options.cache
    if policy.max_frames is None and policy.mode != "rolling":
        policy = replace(policy, max_frames=context.teacher.sample_shape[1])
    generator = CausalRolloutGenerator(student, options.times, options.chunk_frames, policy,
                                       options.context_noise, options.grad_frames, options.recipe,
                                       options.clean_chunks, options.inputs, options.rollout_frames)
    if options.rollout_frames is not None:
        if options.rollout_frames < context.teacher.sample_shape[1]:
            raise ValueError(f"generator.rollout_frames: {options.rollout_frames} is shorter than the teacher's "
                             f"clip of {context.teacher.sample_shape[1]} frames, which the rollout trains on")
        generator.check_frames(options.rollout_frames)
    if options.init_from:
        load_init_weights(generator, options.init_from)
    return generator
