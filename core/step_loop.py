"""The training loop a distillation run and a teacher run share: steps until the end, a log line of running
means every `log_every` steps, a checkpoint every `checkpoint_every`, and a SIGTERM or SIGINT honoured at the
next step boundary with a checkpoint (all ranks agreeing) before `Preempted` is raised."""

from __future__ import annotations

import time
from pathlib import Path

import torch
from tqdm import tqdm

from potstill.core.engine import Engine, NonFiniteError, first_nonfinite
from potstill.core.preemption import Preempted, StopRequests
from potstill.core.run_log import RunLog

PROGRESS_SKIPS = ("grad_norm", "data_", "sec_per_step")


class RunningMean:
    """Scalars averaged over the times each was added: a step's micro-batches, or the steps since the last log
    line (the generator's losses appear only every `generator_every` steps and are averaged over those)."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}

    def add(self, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            self.sums[key] = self.sums.get(key, 0.0) + value
            self.counts[key] = self.counts.get(key, 0) + 1

    def mean(self) -> dict[str, float]:
        return {key: value / self.counts[key] for key, value in self.sums.items()}


def progress_summary(metrics: dict[str, float], width: int = 4) -> dict[str, str]:
    """The first few losses of a log line for the progress bar (grad norms and data counters left out)."""
    losses = [(k, v) for k, v in metrics.items() if not any(skip in k for skip in PROGRESS_SKIPS)]
    return {k: f"{v:.3g}" for k, v in losses[:width]}


def refuse_nonfinite(weights: dict[str, dict[str, torch.Tensor]], step: int, engine: Engine) -> None:
    """Raise before a checkpoint is written when any tensor of `weights` holds a NaN or infinity (the ranks
    agree), so a poisoned model never becomes the run's latest."""
    bad = next((f"{name}.{key}" for name, tensors in weights.items()
                if (key := first_nonfinite(list(tensors.items()))) is not None), None)
    bad = engine.broadcast(bad)
    if bad is not None:
        raise NonFiniteError(f"{bad} is not finite at step {step}; the checkpoint was not written, so a poisoned "
                             "model never becomes the run's latest")


class StepLoop:
    """`train()` for a trainer that has `config.train`, `step`, `run_dir` (None: no logs or checkpoints),
    `engine`, `train_step()` and `save()`; `loop_metrics` and `after_step` are its hooks. `train_seconds` counts
    the wall-clock seconds spent in training steps alone (no logging, evaluation or checkpointing)."""

    loop_name = "train"
    config: object
    step: int
    run_dir: Path | None
    engine: Engine
    train_seconds: float = 0.0

    def train_step(self) -> dict[str, float]:
        raise NotImplementedError

    def save(self) -> Path:
        raise NotImplementedError

    def loop_metrics(self, window: dict[str, float]) -> dict[str, float]:
        """A log line's metrics from this rank's running means since the last line."""
        return window

    def after_step(self) -> None:
        """Work due after a step besides logging and checkpointing (the Distiller's sample grids)."""

    def train(self, steps: int | None = None) -> None:
        """Run until `train.steps` (or `steps` more), logging and checkpointing on the way. A SIGTERM or SIGINT
        stops it at the next step boundary with a checkpoint (raising `Preempted`)."""
        t = self.config.train
        end = t.steps if steps is None else min(t.steps, self.step + steps)
        log = RunLog(self.run_dir / "logs", self.step) if self.run_dir and self.engine.is_main else None
        bar = tqdm(total=end, initial=self.step, disable=not (t.progress and self.engine.is_main),
                   desc=self.loop_name, dynamic_ncols=True)
        start, first, window = time.perf_counter(), self.step, RunningMean()
        try:
            with StopRequests() as stop:
                while self.step < end:
                    began = time.perf_counter()
                    window.add(self.train_step())
                    self.train_seconds += time.perf_counter() - began
                    bar.update(1)
                    if self.run_dir and (self.step % t.log_every == 0 or self.step == end):
                        metrics = self.loop_metrics(window.mean())
                        metrics["sec_per_step"] = (time.perf_counter() - start) / (self.step - first)
                        window = RunningMean()
                        if log:
                            log.write(self.step, metrics)
                        bar.set_postfix(progress_summary(metrics))
                    self.after_step()
                    if self.run_dir and t.checkpoint_every and self.step % t.checkpoint_every == 0:
                        self.save()
                    signum = self.engine.max_over_ranks(stop.signum)
                    if signum:
                        raise Preempted(signum, self.step, self.save() if self.run_dir else None)
        finally:
            bar.close()
            if log:
                log.close()
