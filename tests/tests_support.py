"""Helpers the tests share: repository paths and small configs built in code."""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path
from types import ModuleType

import torch

import potstill  # noqa: F401  (registers the built-in components)
from potstill.core.config import RunConfig, deep_merge, load_config
from potstill.core.distiller import Distiller
from potstill.core.run_log import read_log

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "configs"


def load_benchmark(name: str) -> ModuleType:
    """benchmarks/NAME.py as a module: the benchmarks are scripts, not a package."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module

GAUSSIAN_TEACHER = {"kind": "gmm", "means": [[1.0, -2.0]], "stds": [[0.5, 1.5]], "schedule": "edm"}

RING = {
    "kind": "gmm",
    "means": [[4, 0], [2.83, 2.83], [0, 4], [-2.83, 2.83], [-4, 0], [-2.83, -2.83], [0, -4], [2.83, -2.83]],
    "stds": [0.3] * 8,
}


def trained_consistency_student(objective: dict, steps: int, **generator):
    """The EMA of an MLP consistency student trained by `objective` on exact draws of the default Gaussian
    teacher N([1, -2], diag(0.25, 2.25))."""
    config = make_config(objective=objective, fake_score=None, real_data="mixture",
                         generator={"kind": "consistency", "network": {"kind": "mlp", "hidden": 64, "depth": 2},
                                    **generator},
                         train={"steps": steps, "batch_size": 256, "ema_decay": 0.98},
                         optim={"generator": {"lr": 1e-3, "betas": [0.9, 0.99]}})
    distiller = Distiller(config)
    distiller.train()
    return distiller.ema.model


def assert_samples_the_gaussian_teacher(student, steps: int) -> None:
    """The student's `steps`-step samples have the default Gaussian teacher's mean (within 0.1) and covariance
    (relative Frobenius error below 0.15)."""
    student.use_steps(steps)
    torch.manual_seed(0)
    x = student.sample(torch.randn(20_000, 2)).double()
    mean, cov = x.mean(0), torch.cov(x.T)
    target = torch.diag(torch.tensor([0.25, 2.25], dtype=torch.float64))
    assert torch.allclose(mean, torch.tensor([1.0, -2.0], dtype=torch.float64), atol=0.1), (steps, mean)
    assert (cov - target).norm() / target.norm() < 0.15, (steps, cov)


def make_config(base: dict | None = None, **sections) -> RunConfig:
    """A vector RunConfig: an exact Gaussian teacher, Gaussian generator and exact fake score by default."""
    data = {
        "modality": "vector",
        "teacher": GAUSSIAN_TEACHER,
        "generator": {"kind": "gaussian"},
        "fake_score": "exact_gaussian",
        "objective": "dmd2",
        "train": {"steps": 10, "batch_size": 64, "progress": False, "log_every": 1},
        "eval": {"n_samples": 2000, "batch_size": 2000},
    }
    data = deep_merge(data, base or {})
    data = deep_merge(data, copy.deepcopy(sections))
    return load_config(data=data)


TIMINGS = {"sec_per_step", "data_wait_sec"}


def logged_losses(run_dir: Path) -> list[dict]:
    """A run's logged metrics without the wall-clock timings, for step-by-step comparisons."""
    rows = read_log(run_dir / "logs" / "metrics.jsonl")
    return [{k: v for k, v in row.items() if k not in TIMINGS} for row in rows]


def whole_and_resumed(config: RunConfig, folder: Path, stop_after: int) -> tuple[Distiller, Distiller, int]:
    """The run trained straight through (`folder/whole`), and the same run stopped after `stop_after` steps
    (losing those after its last checkpoint), then resumed and finished (`folder/split`); also the step it
    resumed from."""
    whole = Distiller(config, folder / "whole")
    whole.train()
    first = Distiller(config, folder / "split")
    first.train(steps=stop_after)
    del first
    resumed = Distiller(config, folder / "split")
    assert resumed.resume()
    resumed_from = resumed.step
    resumed.train()
    return whole, resumed, resumed_from


class FeatureDistance(torch.nn.Module):
    """A stand-in for LPIPS in tests: squared differences of a linear projection of 2-D samples, one column per
    feature (the distance network sums them per sample)."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(2, 5)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (self.proj(a) - self.proj(b)).square()[:, :, None]


def feature_distance() -> FeatureDistance:
    """The factory a config names as `tests_support:feature_distance`."""
    return FeatureDistance()
