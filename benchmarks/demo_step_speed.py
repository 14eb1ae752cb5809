"""Seconds per training step of a demo's recipe (default `configs/image/digits_demo.yaml`) at several batch sizes
and thread counts, interleaved in one process so that the machine's drift hits every arm alike: how many steps of
each batch the demo's 15 minutes hold, and how much a second thread speeds each batch up.

    python benchmarks/demo_step_speed.py [--config configs/video/moving_digits_self_forcing.yaml]
        [--batches 64 48 32] [--threads 1 2] [--steps 25] [--rounds 6]

Writes benchmarks/results/demo_step_speed.json and .md (another config: demo_step_speed_<its name>.*)."""

from __future__ import annotations

import argparse
import json
import platform
import statistics
from pathlib import Path

import torch
from distill_step import timed

import potstill  # noqa: F401  (registers components)
from potstill.core.config import load_config
from potstill.core.distiller import Distiller

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
DEMO_CONFIG = ROOT / "configs" / "image" / "digits_demo.yaml"


def measure(config: Path, batches: list[int], threads: list[int], steps: int, rounds: int
            ) -> dict[tuple[int, int], list[float]]:
    """Each round times every (batch, threads) arm once, in the same order."""
    distillers = {b: Distiller(load_config(config, [f"train.batch_size={b}"]), None) for b in batches}
    for distiller in distillers.values():
        timed(distiller.train_step, 3)
    times: dict[tuple[int, int], list[float]] = {(b, t): [] for t in threads for b in batches}
    for _ in range(rounds):
        for t in threads:
            torch.set_num_threads(t)
            for b, distiller in distillers.items():
                times[(b, t)].append(timed(distiller.train_step, steps))
    return times


def markdown(result: dict) -> str:
    rows = ["| batch | threads | median s/step | ms per sample | to the largest batch | speed-up from one thread |",
            "|---|---|---|---|---|---|"]
    for arm in result["arms"]:
        speedup = arm["speedup_from_one_thread"]
        rows.append(f"| {arm['batch']} | {arm['threads']} | {arm['median_sec_per_step']:.4f} | "
                    f"{1000 * arm['median_sec_per_step'] / arm['batch']:.2f} | {arm['ratio_to_largest_batch']:.2f} | "
                    f"{f'{speedup:.2f}' if speedup else '-'} |")
    rows += ["", f"{result['rounds']} interleaved rounds of {result['steps_per_block']} steps per arm; "
                 f"{result['machine']}; ratios of medians."]
    return "\n".join(rows) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", type=Path, default=DEMO_CONFIG)
    parser.add_argument("--batches", type=int, nargs="+", default=[64, 48, 32])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--steps", type=int, default=25, help="steps per timed block")
    parser.add_argument("--rounds", type=int, default=6, help="interleaved blocks per arm")
    args = parser.parse_args()
    config = args.config.resolve()
    times = measure(config, args.batches, args.threads, args.steps, args.rounds)
    median = {arm: statistics.median(v) for arm, v in times.items()}
    largest = max(args.batches)
    arms = [{"batch": b, "threads": t, "sec_per_step": times[(b, t)], "median_sec_per_step": median[(b, t)],
             "ratio_to_largest_batch": median[(b, t)] / median[(largest, t)],
             "speedup_from_one_thread": median[(b, 1)] / median[(b, t)] if t != 1 and 1 in args.threads else None}
            for t in args.threads for b in args.batches]
    result = {"config": str(config.relative_to(ROOT)), "steps_per_block": args.steps, "rounds": args.rounds,
              "machine": platform.processor() or platform.machine(), "arms": arms}
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = "demo_step_speed" if config == DEMO_CONFIG else f"demo_step_speed_{config.stem}"
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2))
    table = markdown(result)
    (RESULTS / f"{name}.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
