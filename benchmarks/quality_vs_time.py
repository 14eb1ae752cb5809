"""Quality against time on the embedded digits: each recipe's one-step student scored every `--every` steps
(`eval.every`: FDD and class recall of the EMA student) against the seconds spent training and against generator
updates, with the teacher's FDD at NFE 1-64 on the same axes, the time each recipe takes to reach the teacher's
NFE-35 FDD, and the spread over seeds for the leaders. Every run is its own `potstill distill` process; `--jobs`
of them run at a time, each on the machine's cores divided among them, so the seconds compare within one run of
this benchmark (one at a time by default).

    python benchmarks/quality_vs_time.py [--recipes NAME=CONFIG[:key=value,...] ...] [--steps N] [--every 250]
        [--seeds 0] [--leader-seeds 0 1 2] [--leaders 2] [--n-eval 1000] [--jobs 1] [--name quality_vs_time]
        [--results DIR]

Writes benchmarks/results/NAME.json, NAME.md and NAME.png."""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import matplotlib

import potstill  # noqa: F401  (registers components)
from potstill.core.config import load_config
from potstill.core.distiller import Distiller
from potstill.core.evaluation import evaluate_teacher
from potstill.core.run_log import read_log
from potstill.core.samplers import default_solver

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from curve_styles import curve_style

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
CONFIGS = ROOT / "configs" / "image"
RECIPES = ["demo=digits_demo.yaml", "sid=digits_sid.yaml", "uni_instruct=digits_uni_instruct.yaml",
           "sim=digits_sim.yaml", "vsd=digits_vsd.yaml", "sida=digits_sida.yaml",
           "dmd2=digits_dmd2.yaml:real_data=digits"]
TEACHER_NFE = [1, 2, 4, 8, 17, 35, 63]   # Heun at odd NFE from 3, Euler below
REFERENCE_NFE = 35


def parse_recipe(text: str) -> tuple[str, Path, list[str]]:
    """NAME=CONFIG[:key=value,...] -> (name, config path under configs/image unless absolute, overrides)."""
    name, sep, rest = text.partition("=")
    if not sep or not name or not rest:
        raise SystemExit(f"--recipes {text!r}: expected NAME=CONFIG[:key=value,...]")
    config, _, settings = rest.partition(":")
    path = Path(config) if Path(config).is_absolute() else CONFIGS / config
    if not path.is_file():
        raise SystemExit(f"--recipes {text!r}: no config {path}")
    return name, path, [s for s in settings.split(",") if s]


def run_recipe(config: Path, overrides: list[str], seed: int, args, out: Path) -> list[dict]:
    """One `potstill distill` process; its `logs/evals.jsonl` (step, train_seconds, generator_updates, metrics)."""
    settings = [*overrides, f"train.seed={seed}", f"eval.every={args.every}", f"eval.every_n_samples={args.n_eval}",
                "eval.batch_size=500", f"eval.n_samples={args.n_eval}", "train.progress=false",
                "train.sample_every=0", "train.checkpoint_every=0"]
    if args.steps is not None:
        settings.append(f"train.steps={args.steps}")
    env = os.environ | {"OMP_NUM_THREADS": str(threads_per_job(args.jobs))}
    done = subprocess.run([sys.executable, "-m", "potstill.cli", "distill", str(config), "--out", str(out), "--set",
                           *settings], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"{config} seed {seed} failed:\n{done.stderr[-2000:]}")
    return read_log(out / "logs" / "evals.jsonl")


def threads_per_job(jobs: int) -> int:
    return max(1, (os.cpu_count() or 1) // jobs)


def run_all(tasks: list[tuple[str, Path, list[str], int]], args, scratch: Path) -> dict[tuple[str, int], list[dict]]:
    """Each (name, config, overrides, seed) task's evaluations, `args.jobs` processes at a time."""
    with ThreadPoolExecutor(args.jobs) as pool:
        futures = {(name, seed): pool.submit(run_recipe, config, overrides, seed, args, scratch / f"{name}_{seed}")
                   for name, config, overrides, seed in tasks}
    return {key: future.result() for key, future in futures.items()}


def teacher_rows(n: int) -> list[dict]:
    """The embedded teacher's FDD and class recall at each NFE on the evaluation's inputs."""
    distiller = Distiller(load_config(CONFIGS / "digits_sid.yaml"), with_real_data=False)
    return [evaluate_teacher(distiller.modality, distiller.teacher, nfe, n, 500) for nfe in TEACHER_NFE]


def reached(curve: list[dict], target: float) -> dict | None:
    """The first evaluation at or below `target` FDD."""
    return next((row for row in curve if row["fdd"] <= target), None)


def summarise(name: str, runs: dict[int, list[dict]], target: float) -> dict:
    """Final FDD (mean and spread over seeds), and when each seed first reached the target."""
    finals = [curve[-1]["fdd"] for curve in runs.values()]
    hits = {seed: reached(curve, target) for seed, curve in runs.items()}
    return {"recipe": name, "seeds": sorted(runs), "final_fdd": statistics.mean(finals),
            "final_fdd_spread": [min(finals), max(finals)], "best_fdd": min(r["fdd"] for c in runs.values() for r in c),
            "final_recall": statistics.mean(curve[-1]["class_recall_mean"] for curve in runs.values()),
            "train_seconds": statistics.mean(curve[-1]["train_seconds"] for curve in runs.values()),
            "reached_seconds": {s: h["train_seconds"] for s, h in hits.items() if h},
            "reached_updates": {s: h["generator_updates"] for s, h in hits.items() if h}}


def format_table(summaries: list[dict], teacher: list[dict]) -> str:
    target = next(t["fdd"] for t in teacher if t["nfe"] == REFERENCE_NFE)
    levels = ", ".join(f"NFE {t['nfe']} ({default_solver(t['nfe'])}) {t['fdd']:.2f}" for t in teacher)
    lines = [f"Teacher FDD: {levels}", "",
             "| recipe | seeds | final FDD (min-max) | best FDD | class recall | train s | "
             f"s to FDD <= {target:.2f} (teacher NFE {REFERENCE_NFE}) | updates to it |",
             "|---|---|---|---|---|---|---|---|"]
    for s in summaries:
        low, high = s["final_fdd_spread"]
        spread = f" ({low:.2f}-{high:.2f})" if len(s["seeds"]) > 1 else ""
        seconds = ", ".join(f"{v:.0f}" for v in s["reached_seconds"].values()) or "not reached"
        updates = ", ".join(str(v) for v in s["reached_updates"].values()) or "-"
        lines.append(f"| {s['recipe']} | {len(s['seeds'])} | {s['final_fdd']:.2f}{spread} | {s['best_fdd']:.2f} | "
                     f"{s['final_recall']:.3f} | {s['train_seconds']:.0f} | {seconds} | {updates} |")
    return "\n".join(lines)


def plot(curves: dict[str, dict[int, list[dict]]], teacher: list[dict], path: Path) -> None:
    """FDD against training seconds and against generator updates; one colour and marker per recipe (seeds share
    them), the teacher's NFE levels as labelled dashed lines."""
    figure, axes = plt.subplots(1, 2, figsize=(13, 5), sharey=True)
    for index, (name, runs) in enumerate(curves.items()):
        for n, curve in enumerate(runs.values()):
            for axis, key in zip(axes, ("train_seconds", "generator_updates"), strict=True):
                axis.plot([r[key] for r in curve], [r["fdd"] for r in curve], label=name if n == 0 else None,
                          **curve_style(index))
    for row in teacher:
        for axis in axes:
            axis.axhline(row["fdd"], color="grey", linestyle="--", linewidth=0.7)
        axes[1].annotate(f"teacher NFE {row['nfe']}", (1.0, row["fdd"]), xycoords=("axes fraction", "data"),
                         fontsize=7, ha="right", va="bottom", color="grey")
    for axis, label in zip(axes, ("seconds spent training (this machine)", "generator updates"), strict=True):
        axis.set_xlabel(label)
        axis.set_yscale("log")
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("FDD of the one-step student (lower is better)")
    axes[0].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", nargs="+", default=RECIPES)
    parser.add_argument("--steps", type=int, default=None, help="train.steps for every recipe (default: its own)")
    parser.add_argument("--every", type=int, default=250)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--leader-seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--leaders", type=int, default=2, help="recipes with the best final FDD run every leader seed")
    parser.add_argument("--n-eval", type=int, default=1000)
    parser.add_argument("--jobs", type=int, default=1, help="distill processes at a time (cores shared among them)")
    parser.add_argument("--name", default="quality_vs_time")
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder for NAME.json, .md and .png")
    args = parser.parse_args()
    recipes = [parse_recipe(text) for text in args.recipes]
    teacher = teacher_rows(args.n_eval)
    target = next(t["fdd"] for t in teacher if t["nfe"] == REFERENCE_NFE)
    curves: dict[str, dict[int, list[dict]]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        first = run_all([(*recipe, seed) for recipe in recipes for seed in args.seeds], args, Path(scratch))
        for (name, seed), curve in first.items():
            curves.setdefault(name, {})[seed] = curve
        ranked = sorted(curves, key=lambda name: statistics.mean(c[-1]["fdd"] for c in curves[name].values()))
        more = [(*recipe, seed) for recipe in recipes if recipe[0] in ranked[: args.leaders]
                for seed in args.leader_seeds if seed not in curves[recipe[0]]]
        for (name, seed), curve in run_all(more, args, Path(scratch)).items():
            curves[name][seed] = curve
    summaries = sorted((summarise(name, runs, target) for name, runs in curves.items()),
                       key=lambda s: s["final_fdd"])
    args.results.mkdir(parents=True, exist_ok=True)
    record = {"machine": platform.machine(), "processor": platform.processor(), "cores": os.cpu_count(),
              "threads_per_run": threads_per_job(args.jobs),
              "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
              "teacher": teacher, "summaries": summaries,
              "curves": {name: {str(seed): curve for seed, curve in runs.items()} for name, runs in curves.items()}}
    (args.results / f"{args.name}.json").write_text(json.dumps(record, indent=2))
    table = format_table(summaries, teacher) + (f"\n\n{args.jobs} runs at a time, {threads_per_job(args.jobs)} "
                                                "thread(s) each" if args.jobs > 1 else "")
    (args.results / f"{args.name}.md").write_text(table + "\n")
    plot(curves, teacher, args.results / f"{args.name}.png")
    print(table)


if __name__ == "__main__":
    main()
