"""Where along a clip a video student misses the moving-digits law: the shift residual and velocity-in-set of
each frame-to-frame transition, for each run's EMA student and for the first run's teacher at chosen NFE, all
on the evaluation's own draw of noise and labels (`draw_samples`), so rows compare side by side and each mean is
the run report's shift residual.

    python benchmarks/video_transitions.py "chunks of 2=runs/sf" "chunks of 1=runs/sf1" --teacher-nfe 24
        [--n 500] [--batch 250] [--name video_transitions]

Writes benchmarks/results/NAME.json and .md."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from video_long_clips import parse_row

from potstill.core.evaluation import EVAL_SEED, draw_samples
from potstill.core.samplers import sample as teacher_sample
from potstill.modalities.video_scores import law_residuals
from potstill.runs import open_run

RESULTS = Path(__file__).resolve().parent / "results"


@torch.no_grad()
def per_transition(clips: torch.Tensor, velocities: list[list[int]]) -> dict[str, list[float]]:
    """Means over clips of each transition's residual and of whether its best shift is in the velocity set."""
    residual, in_set = law_residuals(clips, velocities)
    return {"residual": residual.mean(0).tolist(), "in_set": in_set.float().mean(0).tolist(),
            "mean_residual": float(residual.mean())}


def format_table(rows: list[dict]) -> str:
    transitions = len(rows[0]["residual"])
    header = ["model", "mean residual", *(f"{k + 1}->{k + 2}" for k in range(transitions))]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = [f"{v:.3f} ({s:.2f})" for v, s in zip(r["residual"], r["in_set"], strict=True)]
        lines.append(f"| {r['label']} | {r['mean_residual']:.4f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("rows", nargs="+", help="LABEL=RUN_DIR[:key=value,...]")
    parser.add_argument("--teacher-nfe", type=int, nargs="*", default=[])
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--batch", type=int, default=250)
    parser.add_argument("--name", default="video_transitions")
    args = parser.parse_args()
    rows, first = [], None
    for label, run, overrides in map(parse_row, args.rows):
        distiller = open_run(run, overrides=overrides)
        first = first or distiller
        distiller.ema.model.eval()
        clips = draw_samples(distiller.modality, distiller.ema.model.sample, args.n, args.batch)[0]
        rows.append({"label": label, "run": run, "overrides": overrides,
                     **per_transition(clips, distiller.modality.law.velocities)})
    for nfe in args.teacher_nfe:
        clips = draw_samples(first.modality, lambda z, c, nfe=nfe: teacher_sample(first.teacher, z, c, nfe), args.n,
                             args.batch)[0]
        rows.append({"label": f"teacher, NFE {nfe}", **per_transition(clips, first.modality.law.velocities)})
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps({"n": args.n, "rows": rows}, indent=2))
    table = format_table(rows)
    (RESULTS / f"{args.name}.md").write_text(
        f"{args.n} clips a row, the evaluation's draw of noise and labels (seed {EVAL_SEED}, batches of {args.batch}); "
        "each transition's mean shift residual, with the share of clips whose best shift there is in the velocity "
        f"set in brackets.\n\n{table}\n")
    print(table)


if __name__ == "__main__":
    main()
