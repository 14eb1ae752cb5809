"""Helpers the tests share: repository paths and small configs built in code."""

from __future__ import annotations

import copy
from pathlib import Path

import potstill  # noqa: F401  (registers the built-in components)
from potstill.core.config import RunConfig, deep_merge, load_config
from potstill.core.distiller import Distiller
from potstill.core.run_log import read_log

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "configs"

GAUSSIAN_TEACHER = {"kind": "gmm", "means": [[1.0, -2.0]], "stds": [[0.5, 1.5]], "schedule": "edm"}

RING = {
    "kind": "gmm",
    "means": [[4, 0], [2.83, 2.83], [0, 4], [-2.83, 2.83], [-4, 0], [-2.83, -2.83], [0, -4], [2.83, -2.83]],
    "stds": [0.3] * 8,
}


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
