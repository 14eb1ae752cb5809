"""Every objective side by side: the 2-D 8-mode mixture and the embedded digits, each objective's own
config with the same number of steps, the same seeds and the same evaluation budget. Records the final
sliced W2 / FDD, mode / class recall, training wall time per step and the quality-against-steps curve; few-step
students (consistency, MeanFlow) are also scored at 2 and 4 sampling steps.

    python benchmarks/objectives.py [--vector-steps 3000] [--digits-steps 400] [--seeds 0] [--only dmd2 sid]

Writes benchmarks/results/objectives.json, objectives.md and objectives.png.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import matplotlib
import torch

import potstill  # noqa: F401  (registers components)
from potstill.core.config import load_config
from potstill.core.distiller import Distiller

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from curve_styles import curve_style

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
OBJECTIVES = ["dmd2", "dmd", "vsd", "sid", "sid_lsg", "sida", "sim", "fdistill", "uni_instruct", "cd", "scm",
              "scm_ladd", "meanflow", "sds", "add", "ladd", "apt"]
FEW_STEP_GENERATORS = {"consistency", "meanflow"}
SAMPLING_STEPS = [2, 4]
SUITES = {
    "vector": {"config": "vector/gmm_{}.yaml", "quality": "swd", "recall": "mode_recall", "n_eval": 5000},
    "digits": {"config": "image/digits_{}.yaml", "quality": "fdd", "recall": "class_recall_mean", "n_eval": 1000},
}


def run_one(config_path: Path, steps: int, seed: int, points: int, n_eval: int) -> dict:
    """Train `steps` iterations, evaluating the EMA student `points` times on the way."""
    config = load_config(config_path, [f"train.steps={steps}", f"train.seed={seed}", "train.progress=false",
                                       "train.sample_every=0", "train.checkpoint_every=0",
                                       f"eval.n_samples={n_eval}", f"eval.batch_size={min(n_eval, 1000)}"])
    distiller = Distiller(config)
    curve, train_seconds = [], 0.0
    chunk = max(1, steps // points)
    while distiller.step < steps:
        start = time.perf_counter()
        distiller.train(chunk)
        train_seconds += time.perf_counter() - start
        curve.append({"step": distiller.step, **distiller.evaluate()["student"]})
    by_steps = {}
    if config.generator.kind in FEW_STEP_GENERATORS:
        for k in SAMPLING_STEPS:
            distiller.ema.model.use_steps(k)
            by_steps[k] = distiller.evaluate()["student"]
    return {"curve": curve, "sec_per_step": train_seconds / steps, "final": curve[-1], "by_steps": by_steps}


def summarise(runs: list[dict], quality: str, recall: str) -> dict:
    finals = [r["final"] for r in runs]
    return {
        "quality": statistics.mean(f[quality] for f in finals),
        "recall": statistics.mean(f[recall] for f in finals),
        "sec_per_step": statistics.mean(r["sec_per_step"] for r in runs),
        "by_steps": {str(k): statistics.mean(r["by_steps"][k][quality] for r in runs) for k in runs[0]["by_steps"]},
        "curve": [{"step": p["step"], "quality": statistics.mean(r["curve"][i][quality] for r in runs)}
                  for i, p in enumerate(runs[0]["curve"])],
    }


def markdown(results: dict) -> str:
    lines = []
    for suite, table in results["suites"].items():
        spec = SUITES[suite]
        lines += [f"### {suite} ({table['steps']} steps, seeds {results['seeds']})", "",
                  f"| objective | {spec['quality']} | {spec['recall']} | s/step | "
                  + " | ".join(f"{spec['quality']} at {k} steps" for k in SAMPLING_STEPS) + " |",
                  "|---|---|---|---|" + "---|" * len(SAMPLING_STEPS)]
        ranked = sorted(table["objectives"].items(), key=lambda item: item[1]["quality"])
        for name, row in ranked:
            few = row.get("by_steps", {})
            cells = " | ".join(f"{few[str(k)]:.3f}" if str(k) in few else "-" for k in SAMPLING_STEPS)
            lines.append(f"| {name} | {row['quality']:.3f} | {row['recall']:.3f} | {row['sec_per_step']:.4f} | "
                         f"{cells} |")
        lines.append("")
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    suites = results["suites"]
    figure, axes = plt.subplots(1, len(suites), figsize=(6 * len(suites), 4.5), squeeze=False)
    for axis, (suite, table) in zip(axes[0], suites.items(), strict=True):
        for index, (name, row) in enumerate(table["objectives"].items()):
            axis.plot([p["step"] for p in row["curve"]], [p["quality"] for p in row["curve"]], label=name,
                      **curve_style(index))
        axis.set(title=suite, xlabel="step", ylabel=SUITES[suite]["quality"], yscale="log")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7, ncol=2)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vector-steps", type=int, default=3000)
    parser.add_argument("--digits-steps", type=int, default=400)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--points", type=int, default=8, help="evaluations along each run")
    parser.add_argument("--only", nargs="+", default=OBJECTIVES, choices=OBJECTIVES)
    parser.add_argument("--suites", nargs="+", default=list(SUITES), choices=list(SUITES))
    parser.add_argument("--merge", action="store_true", help="update rows of an existing objectives.json")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    steps = {"vector": args.vector_steps, "digits": args.digits_steps}
    results = {"machine": platform.platform(), "torch": torch.__version__, "seeds": args.seeds, "suites": {}}
    if args.merge and (RESULTS / "objectives.json").is_file():
        results = json.loads((RESULTS / "objectives.json").read_text())
    for suite in args.suites:
        spec = SUITES[suite]
        table = results["suites"].get(suite, {"steps": steps[suite], "objectives": {}})
        if table["steps"] != steps[suite]:
            raise SystemExit(f"--merge: {suite} rows in objectives.json ran {table['steps']} steps, not {steps[suite]}")
        for name in args.only:
            path = ROOT / "configs" / spec["config"].format(name)
            if not path.is_file():
                continue
            runs = [run_one(path, steps[suite], seed, args.points, spec["n_eval"]) for seed in args.seeds]
            table["objectives"][name] = summarise(runs, spec["quality"], spec["recall"])
            row = table["objectives"][name]
            print(f"{suite:7s} {name:9s} {spec['quality']} {row['quality']:.3f} recall {row['recall']:.3f} "
                  f"{row['sec_per_step']:.4f} s/step", flush=True)
        results["suites"][suite] = table
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "objectives.json").write_text(json.dumps(results, indent=2))
    (RESULTS / "objectives.md").write_text(markdown(results))
    plot(results, RESULTS / "objectives.png")
    print(markdown(results))


if __name__ == "__main__":
    main()
