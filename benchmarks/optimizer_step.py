"""Seconds per training step of the digits demo (SiD: one fake-score update, one generator update) with AdamW's
multi-tensor (foreach) update against its per-tensor loop, on one Distiller, the two interleaved round by round so
machine noise hits both alike. The plain engine uses foreach; this measures why.

    python benchmarks/optimizer_step.py [--steps 100] [--rounds 5]

Writes benchmarks/results/optimizer_step.json and .md.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from importlib import resources
from pathlib import Path

import torch

import potstill  # noqa: F401  (registers components)
from potstill.core.config import load_config
from potstill.core.distiller import Distiller

RESULTS = Path(__file__).resolve().parent / "results"


def set_foreach(distiller: Distiller, foreach: bool) -> None:
    """Switch every AdamW of the run between its multi-tensor and per-tensor implementations."""
    for trainable in distiller.trainables():
        for group in trainable.backend.param_groups:
            group["foreach"] = foreach


def seconds_per_step(distiller: Distiller, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        distiller.train_step()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    config_path = Path(str(resources.files("potstill.configs.image") / "digits_demo.yaml"))
    distiller = Distiller(load_config(config_path, ["train.progress=false"]), with_real_data=False)
    seconds_per_step(distiller, 20)
    times: dict[str, list[float]] = {"foreach": [], "per-tensor": []}
    for _ in range(args.rounds):
        for name in times:
            set_foreach(distiller, name == "foreach")
            times[name].append(seconds_per_step(distiller, args.steps))
    medians = {name: statistics.median(values) for name, values in times.items()}
    result = {"machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
              "steps_per_round": args.steps, "rounds": args.rounds, "seconds_per_step": times,
              "median_seconds_per_step": medians, "per_tensor_over_foreach": medians["per-tensor"] / medians["foreach"]}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "optimizer_step.json").write_text(json.dumps(result, indent=2))
    lines = ["| AdamW update | median s per step | rounds (s per step) |", "|---|---|---|"]
    lines += [f"| {name} | {medians[name]:.4f} | {', '.join(f'{v:.4f}' for v in values)} |"
              for name, values in times.items()]
    ratio = result["per_tensor_over_foreach"]
    lines.append(f"\nper-tensor / foreach: {ratio:.3f} ({args.rounds} interleaved rounds of {args.steps} digits-demo "
                 f"steps, {result['threads']} threads)")
    (RESULTS / "optimizer_step.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
