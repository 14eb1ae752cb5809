"""Scoring students and teachers the same way: fixed inputs, the modality's metrics, and the
wall-clock milliseconds per sample."""

from __future__ import annotations

import time

import torch

from potstill.core.denoiser import Denoiser
from potstill.core.generator import Generator
from potstill.core.modality import Modality
from potstill.core.samplers import sample as teacher_sample
from potstill.core.tensors import to_device

EVAL_SEED = 2024


@torch.no_grad()
def draw_samples(modality: Modality, produce, n: int, batch: int, device="cpu"
                 ) -> tuple[torch.Tensor, torch.Tensor | None, float]:
    """`produce(noise, cond)` on the evaluation seed's inputs, `batch` at a time: the samples on the CPU, their
    conditions, and the seconds spent producing them; every scorer draws through it, so rows compare."""
    generator = torch.Generator().manual_seed(EVAL_SEED)
    samples, conds, seconds = [], [], 0.0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(EVAL_SEED)
        for start in range(0, n, batch):
            noise, cond = modality.draw_inputs(min(batch, n - start), generator)
            begin = time.perf_counter()
            x = produce(noise.to(device), to_device(cond, device))
            seconds += time.perf_counter() - begin
            samples.append(x.float().cpu())
            conds.append(cond)
    return torch.cat(samples), torch.cat(conds) if conds[0] is not None else None, seconds


def _collect(modality: Modality, produce, n: int, batch: int, device) -> dict[str, float]:
    x, cond, seconds = draw_samples(modality, produce, n, batch, device)
    return {**modality.evaluate(x, cond), "ms_per_sample": 1000 * seconds / n}


def evaluate_generator(modality: Modality, generator: Generator, n: int, batch: int, device="cpu") -> dict:
    """Metrics of a student, at its own number of steps."""
    generator.eval()
    metrics = _collect(modality, generator.sample, n, batch, device)
    return {"nfe": generator.nfe, **metrics, **modality.generator_metrics(generator)}


def evaluate_teacher(modality: Modality, teacher: Denoiser, nfe: int, n: int, batch: int, device="cpu",
                     guidance: float = 1.0) -> dict:
    """Metrics of the teacher's ODE sampler at `nfe` evaluations."""
    metrics = _collect(modality, lambda z, c: teacher_sample(teacher, z, c, nfe, guidance=guidance), n, batch,
                       device)
    return {"nfe": nfe, **metrics}
