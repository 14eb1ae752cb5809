"""A run's multi-step student and its teacher's own weights under the same ping-pong sampler, at other lists of
times: which part of the student's score its training earned and which its sampler sets (the last time fixes how
much noise the last x0 prediction has to remove). Every row on the evaluation's draw of noise and labels.

    python benchmarks/pingpong_times.py RUN "1,0.75,0.5,0.25" "1,0.5,0.2,0.02" [--keys impurity fad_toy]
        [--n 500] [--batch 250] [--name pingpong_times]

Writes benchmarks/results/NAME.json and .md."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from potstill.core.evaluation import evaluate_generator
from potstill.core.generator import DenoiserGenerator
from potstill.runs import open_run

RESULTS = Path(__file__).resolve().parent / "results"


def parse_times(text: str) -> list[float]:
    """'1,0.5,0.2' as a list of times; DenoiserGenerator refuses a list that does not decrease."""
    try:
        return [float(t) for t in text.split(",")]
    except ValueError:
        raise SystemExit(f"{text!r}: times must be comma-separated numbers, like 1,0.5,0.2") from None


def score(distiller, times_lists: list[list[float]], n: int, batch: int) -> list[dict]:
    """For each list, the modality's metrics of the student's weights and of the teacher's, ping-ponged along it."""
    student = distiller.ema.model
    rows = []
    for times in times_lists:
        for weights, denoiser in (("student", student.denoiser), ("teacher", distiller.teacher)):
            sampler = DenoiserGenerator(denoiser, times, student.guidance).eval()
            rows.append({"weights": weights, "times": times,
                         **evaluate_generator(distiller.modality, sampler, n, batch, distiller.engine.device)})
    return rows


def format_table(rows: list[dict], keys: list[str]) -> str:
    lines = ["| weights | times | " + " | ".join(keys) + " |", "|---|---|" + "---|" * len(keys)]
    for r in rows:
        cells = [f"{r[k]:.3g}" for k in keys]
        lines.append(f"| {r['weights']} | {', '.join(f'{t:g}' for t in r['times'])} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run")
    parser.add_argument("times", nargs="+", type=parse_times, help="comma-separated, decreasing: 1,0.5,0.2,0.02")
    parser.add_argument("--keys", nargs="+", default=["impurity", "fad_toy"], help="metrics in the table")
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--batch", type=int, default=250)
    parser.add_argument("--name", default="pingpong_times")
    args = parser.parse_args()
    rows = score(open_run(args.run), args.times, args.n, args.batch)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps({"run": args.run, "n": args.n, "rows": rows}, indent=2))
    table = format_table(rows, args.keys)
    (RESULTS / f"{args.name}.md").write_text(
        f"{args.run}: {args.n} samples a row, the evaluation's draw; the student's weights and the teacher's under "
        f"one ping-pong sampler.\n\n{table}\n")
    print(table)


if __name__ == "__main__":
    main()
