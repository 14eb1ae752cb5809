"""ODE regression (CausVid's initialisation, reference §9): the student learns to map the teacher's ODE states at
its own step times to the teacher's clean endpoint. For a chunked (causal) student every chunk of a clip gets
its own step index, drawn from the student's steps plus a clean entry (t = 0: the chunk is given clean, as
context), the whole clip runs through the block-causal mask in one pass, and the loss is the MSE to the
endpoint over the frames with t != 0. A one-pass student (images, a bidirectional video student) draws one
step per sample. The pairs come from `core/ode_pairs.py`: made once, cached, refused if from another teacher."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import repeat

from potstill.core import parallel
from potstill.core.objectives.base import Objective
from potstill.core.ode_pairs import PairSettings, load_or_make, next_rows
from potstill.core.registry import OBJECTIVES
from potstill.core.rollout import draw_chunk_steps
from potstill.core.samplers import Solver


@dataclass
class ODERegressionOptions:
    """`pairs` inputs drawn with `pair_seed`, solved by the teacher's `solver` in `pair_nfe` steps (its grid with
    the student's times inserted). Cached in `pairs_file`, or under `pairs_dir` with a name made from the
    teacher's hash and these settings (null both: made in memory each run). `clean_chunks`: chunks may be
    given clean (the "plus 0" step of CausVid), so later chunks learn from clean context."""

    pairs: int = 1024
    pair_nfe: int = 32
    solver: Solver = "euler"
    guidance: float = 1.0
    pair_seed: int = 20240501
    pair_batch: int = 64
    pairs_file: str | None = None
    pairs_dir: str | None = "runs/cache/ode_pairs"
    clean_chunks: bool = True


class ODERegression(Objective):
    uses_fake_score = False
    samples_generator = False

    def __init__(self, options: ODERegressionOptions, modality) -> None:
        super().__init__(options)
        self._modality = [modality]      # a list keeps it out of this module's parameters
        self.pairs: dict[str, torch.Tensor] | None = None
        self.register_buffer("cursor", torch.zeros((), dtype=torch.long))    # checkpointed, so resumes continue

    def pair_settings(self, generator) -> PairSettings:
        o = self.options
        return PairSettings(o.pairs, [float(t) for t in generator.times], o.pair_nfe, o.solver, o.guidance,
                            o.pair_seed)

    def next_pairs(self, generator, teacher, batch: int, device: torch.device) -> dict[str, torch.Tensor]:
        """The next `batch` rows of this rank, cycling through the pairs."""
        if self.pairs is None:
            o = self.options
            self.pairs = load_or_make(teacher, self._modality[0], self.pair_settings(generator), device, o.pairs_file,
                                      o.pairs_dir, o.pair_batch)
        index = next_rows(self.cursor, self.options.pairs, batch)
        return {k: v[index].to(device) for k, v in self.pairs.items()}

    def inputs(self, generator, states: torch.Tensor, endpoint: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(x_t, t): per sample one step (one-pass students) or per chunk one step of the steps plus clean."""
        times = generator.times.to(endpoint)
        steps = len(times)
        if generator.chunk_frames is None:
            k = parallel.draw_local(lambda n: torch.randint(steps, (n,)), endpoint.shape[0]).to(endpoint.device)
            return states[torch.arange(len(k), device=k.device), k], times[k]
        generator.check_frames(endpoint.shape[2])
        k = draw_chunk_steps(endpoint.shape[0], endpoint.shape[2], generator.chunk_frames, steps,
                             self.options.clean_chunks, endpoint.device)
        every = torch.cat([states, endpoint[:, None]], dim=1)
        c, h, w = endpoint.shape[1], endpoint.shape[3], endpoint.shape[4]
        x_t = every.gather(1, repeat(k, "b f -> b 1 c f h w", c=c, h=h, w=w)).squeeze(1)
        return x_t, generator.chunk_times(k).to(endpoint)

    def generator_step(self, generator, noise, cond, teacher, fake, adversary=None):
        pairs = self.next_pairs(generator, teacher, noise.shape[0], noise.device)
        x_t, t = self.inputs(generator, pairs["states"], pairs["endpoint"])
        x0 = generator.denoise(x_t, t, pairs.get("cond")).float()
        error = (x0 - pairs["endpoint"]) ** 2
        if t.ndim == 1:
            loss = error.mean()
        else:
            noisy = repeat((t != 0).to(error), "b f -> b 1 f 1 1")
            loss = (error * noisy).sum() / (noisy.sum() * (error.numel() // noisy.numel())).clamp_min(1)
        return loss, {"ode_mse": loss.item()}, None


@OBJECTIVES.register("ode_regression", ODERegressionOptions)
def build_ode_regression(options: ODERegressionOptions, context) -> ODERegression:
    return ODERegression(options, context.modality)
