"""The causal few-step video student: frames generated chunk by chunk on a block-causal backbone with a KV
cache (CausVid, Self-Forcing; reference §9). Each chunk runs the student's step list from noise, every step
reading the cache without writing; the chunk's output is then re-run at `context_noise` to write its clean K/V.

Training (`forward`) is one of two recipes:
- `self_forcing`: Self-Forcing's rollout. One exit step is drawn per rollout (the same on every rank, as the
  global RNG is), the steps before it run without grad, only the exit step carries grad, and the cache refresh
  runs without grad, so no gradient crosses the cache or an earlier chunk; with `grad_frames`, only the chunks
  holding the last `grad_frames` frames carry grad at all. With `rollout_frames` longer than the clip, the
  rollout first streams a prefix of fresh noise (a whole number of chunks, drawn uniformly, the same on every
  rank) without grad and returns the clip's frames after it: Self-Forcing++'s window of a long rollout (Cui et
  al. 2025), so the student also trains where its cache holds its own earlier output rather than a fresh start.
- `diffusion_forcing`: CausVid's. A clip, either real (`inputs: real`, as CausVid's shipped DMD config
  reads real video latents) or made by the student's own sampler without grad (`inputs: own`, backward
  simulation), is noised per chunk to a step drawn from the step list plus 0 (a clean chunk), and the whole
  clip is denoised in one pass through the block-causal mask, with grad."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from typing import Literal

import torch
from einops import repeat

from potstill.core import parallel
from potstill.core.causal import CachePolicy, KVCache
from potstill.core.denoiser import Denoiser
from potstill.core.generator import Generator

Recipe = Literal["self_forcing", "diffusion_forcing"]
Inputs = Literal["own", "real"]


def draw_chunk_steps(batch: int, frames: int, chunk_frames: int, steps: int, clean: bool,
                     device: torch.device) -> torch.Tensor:
    """[batch, frames] step indices, one per chunk and sample, drawn from `steps` (plus index `steps`, a clean
    chunk, when `clean`), this rank's rows of a global draw (CausVid's per-block indices)."""
    k = parallel.draw_local(lambda n: torch.randint(steps + int(clean), (n, frames // chunk_frames)), batch)
    return repeat(k.to(device), "b n -> b (n f)", f=chunk_frames)


class CausalRolloutGenerator(Generator):
    """Streams [B, C, F, H, W] in chunks of `chunk_frames` frames; `times` are the student's step times per chunk."""

    def __init__(self, denoiser: Denoiser, times: list[float], chunk_frames: int, policy: CachePolicy,
                 context_noise: float = 0.0, grad_frames: int | None = None, recipe: Recipe = "self_forcing",
                 clean_chunks: bool = True, inputs: Inputs = "own", rollout_frames: int | None = None) -> None:
        super().__init__()
        if inputs == "real" and recipe != "diffusion_forcing":
            raise ValueError("generator.inputs: real clips are noised per chunk only by recipe diffusion_forcing; "
                             f"recipe {recipe} rolls out from noise, so set generator.inputs: own")
        if rollout_frames is not None and recipe != "self_forcing":
            raise ValueError("generator.rollout_frames: a longer rollout is Self-Forcing's (recipe self_forcing); "
                             f"recipe {recipe} denoises the clip in one pass, so set generator.rollout_frames: null")
        if rollout_frames is not None and rollout_frames % chunk_frames:
            raise ValueError(f"generator.rollout_frames: {rollout_frames} is not a whole number of chunks of "
                             f"{chunk_frames} frames (generator.chunk_frames)")
        if not times or any(a <= b for a, b in itertools.pairwise(times)):
            raise ValueError(f"generator.times: must be a non-empty decreasing list, got {times}")
        if grad_frames is not None and grad_frames % chunk_frames:
            raise ValueError(f"generator.grad_frames: {grad_frames} is not a whole number of chunks of "
                             f"{chunk_frames} frames (generator.chunk_frames)")
        self.denoiser = denoiser
        self.register_buffer("times", torch.tensor(times, dtype=torch.float32), persistent=False)
        self.chunk_frames = chunk_frames
        self.policy = policy
        self.context_noise = context_noise
        self.grad_frames = grad_frames
        self.recipe = recipe
        self.clean_chunks = clean_chunks
        self.rollout_frames = rollout_frames
        self.trains_on_real = inputs == "real"
        backbone = denoiser.backbone
        backbone.causal, backbone.chunk_frames = True, chunk_frames
        backbone.window_frames, backbone.sink_frames = policy.window_frames, policy.sink_frames

    @property
    def nfe(self) -> int:
        """Evaluations per chunk: the steps plus the cache write (which the last chunk of a clip skips)."""
        return len(self.times) + 1

    def check_frames(self, frames: int) -> None:
        """Refuse, before any work, frames that do not fill whole chunks or that overrun a bounded cache."""
        if frames % self.chunk_frames:
            raise ValueError(f"generator.chunk_frames: {frames} frames do not split into chunks of "
                             f"{self.chunk_frames}; choose frames (modality.frames or --frames) that are a multiple")
        p = self.policy
        if p.mode == "none" and p.max_frames is not None and frames > p.max_frames:
            raise ValueError(f"generator.cache: {frames} frames (modality.frames or --frames) overrun the cache of "
                             f"{p.max_frames} frames (mode none); set generator.cache.mode to rolling (a window plus "
                             "sink frames) or segment (restart with the last chunk prefilled)")

    def denoise(self, x_t: torch.Tensor, t: torch.Tensor, cond) -> torch.Tensor:
        """x0 of a whole clip in one pass through the block-causal mask; `t` is [B] or one time per frame [B, F]."""
        self.check_frames(x_t.shape[2])
        return self.denoiser.x0(x_t, t, cond)

    def _x0(self, x_t: torch.Tensor, t: torch.Tensor, cond, cache: KVCache, write: bool) -> torch.Tensor:
        return self.denoiser.x0(x_t, t.expand(x_t.shape[0]), cond, cache=cache, write=write)

    def _renoise(self, x0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.denoiser.schedule.add_noise(x0, parallel.randn_like(x0), t.expand(x0.shape[0]))

    def denoise_chunk(self, noise: torch.Tensor, cond, cache: KVCache, exit_step: int, with_grad: bool
                      ) -> torch.Tensor:
        """The chunk's steps up to `exit_step` from its noise; only the exit step may carry grad."""
        x_t = self.denoiser.schedule.sigma(self.times[0]) * noise
        with torch.no_grad():
            for k in range(exit_step):
                x_t = self._renoise(self._x0(x_t, self.times[k], cond, cache, False), self.times[k + 1])
        with torch.set_grad_enabled(with_grad and torch.is_grad_enabled()):
            return self._x0(x_t, self.times[exit_step], cond, cache, False)

    @torch.no_grad()
    def write_context(self, x0: torch.Tensor, cond, cache: KVCache) -> None:
        """Write a finished chunk's K/V: its output noised to `context_noise` (0: clean), without grad."""
        t = torch.tensor(self.context_noise, device=x0.device, dtype=x0.dtype)
        x_c = self._renoise(x0, t) if self.context_noise > 0 else x0
        self._x0(x_c, t, cond, cache, True)

    def new_cache(self, noise: torch.Tensor) -> KVCache:
        return self.denoiser.backbone.new_cache(noise.shape[0], self.policy, noise.device, noise.dtype)

    def chunks(self, noise: torch.Tensor, cond, exit_step: int, grad_last: int | None) -> Iterator[torch.Tensor]:
        """Each chunk's x0 in turn; the exit steps of the chunks holding the last `grad_last` frames carry grad
        (None: none do). Under `segment`, a full cache restarts with the last chunk written first."""
        self.check_frames(noise.shape[2])
        cache = self.new_cache(noise)
        grad_from = noise.shape[2] - grad_last if grad_last is not None else None
        previous = None
        for start in range(0, noise.shape[2], self.chunk_frames):
            end = start + self.chunk_frames
            if self.policy.mode == "segment" and cache.is_full(self.chunk_frames):
                cache.reset()
                self.write_context(previous, cond, cache)
            with_grad = grad_from is not None and end > grad_from
            x0 = self.denoise_chunk(noise[:, :, start:end], cond, cache, exit_step, with_grad)
            if end < noise.shape[2]:                  # the last chunk's K/V would serve no later chunk
                self.write_context(x0.detach(), cond, cache)
            previous = x0.detach()
            yield x0

    def forward(self, noise: torch.Tensor, cond=None) -> torch.Tensor:
        """A training output with grad; `noise` is a clean real clip instead when `trains_on_real`."""
        if self.recipe == "diffusion_forcing":
            return self.diffusion_forcing(noise, cond)
        exit_step = int(torch.randint(len(self.times), ())) if len(self.times) > 1 else 0
        return self.rollout(noise, cond, exit_step, self.draw_prefix_frames(noise.shape[2]))

    def draw_prefix_frames(self, frames: int) -> int:
        """Frames a training rollout streams before the clip's `frames`: a whole number of chunks drawn uniformly
        from 0 to `rollout_frames - frames` on the global RNG (so the same on every rank); 0 without it."""
        if self.rollout_frames is None or self.rollout_frames <= frames:
            return 0
        return self.chunk_frames * int(torch.randint((self.rollout_frames - frames) // self.chunk_frames + 1, ()))

    def rollout(self, noise: torch.Tensor, cond, exit_step: int, prefix_frames: int = 0) -> torch.Tensor:
        """The training rollout of `noise` after `prefix_frames` frames streamed from fresh noise (no grad, they
        are dropped): grad only at the exit steps of the last `grad_frames` (default: all) of noise's frames."""
        frames = noise.shape[2]
        if prefix_frames:
            b, c, _, h, w = noise.shape
            noise = torch.cat([parallel.randn_like(noise.new_empty(b, c, prefix_frames, h, w)), noise], dim=2)
        grad_last = frames if self.grad_frames is None else min(frames, self.grad_frames)
        return torch.cat(list(self.chunks(noise, cond, exit_step, grad_last)), dim=2)[:, :, -frames:]

    def chunk_times(self, k: torch.Tensor) -> torch.Tensor:
        """Per-frame times of per-frame step indices; index len(times) is t = 0 (a clean chunk)."""
        return torch.cat([self.times, self.times.new_zeros(1)]).to(k.device)[k]

    def diffusion_forcing(self, inputs: torch.Tensor, cond) -> torch.Tensor:
        """A real clip (`trains_on_real`) or the student's own clip from noise (no grad), noised per chunk to a
        drawn step, denoised in one masked pass."""
        if self.trains_on_real:
            source = inputs
        else:
            with torch.no_grad():
                source = self.sample(inputs, cond)
        k = draw_chunk_steps(source.shape[0], source.shape[2], self.chunk_frames, len(self.times),
                             self.clean_chunks, source.device)
        t = self.chunk_times(k).to(source)
        return self.denoise(self.denoiser.schedule.add_noise(source, parallel.randn_like(source), t), t, cond)

    @torch.no_grad()
    def sample(self, noise: torch.Tensor, cond=None) -> torch.Tensor:
        return torch.cat(list(self.chunks(noise, cond, len(self.times) - 1, None)), dim=2)

    @torch.no_grad()
    def stream(self, noise: torch.Tensor, cond=None) -> Iterator[tuple[torch.Tensor, float]]:
        """Chunks as they are finished, each with the seconds it took (its steps and, but for the last chunk, its
        cache write)."""
        started = time.perf_counter()
        for chunk in self.chunks(noise, cond, len(self.times) - 1, None):
            now = time.perf_counter()
            yield chunk, now - started
            started = time.perf_counter()
