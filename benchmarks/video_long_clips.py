"""Score video runs on long streamed clips, every run on one draw of noise and labels (the same seed), so rows
compare side by side: shift residual per 12-frame range, velocity in set, FVD-toy, class recall, `class kept`,
the label's recall in the last 12 frames and which way a changed class went (`class lost`, `class corrected`).
A row is LABEL=RUN_DIR, optionally with sampling-time settings after a colon, comma-separated
(generator.cache.sink_frames=2).

    python benchmarks/video_long_clips.py "guidance 2=runs/sf" "guidance 2, sinks=runs/sf:generator.cache.sink_frames=2"
        [--frames 48] [--n 500] [--batch 50] [--name video_long_clips]

Writes benchmarks/results/NAME.json and .md."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from potstill.core.evaluation import evaluate_generator
from potstill.runs import open_run

RESULTS = Path(__file__).resolve().parent / "results"
COLUMNS = [("velocity_in_set", "velocity in set", 3),
           ("fvd_toy", "FVD-toy", 1), ("class_recall_mean", "class recall", 3), ("class_kept", "class kept", 3),
           ("class_recall_last", "class recall, last 12", 3), ("class_lost", "class lost", 3),
           ("class_corrected", "class corrected", 3)]


def parse_row(text: str) -> tuple[str, str, list[str]]:
    """LABEL=RUN[:key=value,key=value] -> (label, run, overrides)."""
    label, sep, rest = text.partition("=")
    if not sep or not label or not rest:
        raise SystemExit(f"row {text!r}: expected LABEL=RUN_DIR[:key=value,...]")
    run, _, settings = rest.partition(":")
    return label, run, [s for s in settings.split(",") if s]


def score(run: str, overrides: list[str], frames: int, n: int, batch: int) -> dict[str, float]:
    """The run's EMA student streaming `frames`-frame clips; the noise and labels depend on the seed alone."""
    distiller = open_run(run, overrides=[f"modality.frames={frames}", *overrides])
    torch.manual_seed(0)
    metrics = evaluate_generator(distiller.modality, distiller.ema.model, n, batch, distiller.engine.device)
    return {k: v for k, v in metrics.items() if isinstance(v, float)}


def last_range(metrics: dict[str, float]) -> str:
    ranges = sorted((k for k in metrics if k.startswith("shift_residual_")), key=lambda k: int(k.split("_")[2]))
    return ranges[-1]


def format_table(rows: list[dict]) -> str:
    header = ["run", "settings", "shift residual, frames 1-12", "shift residual, last 12",
              *(title for _, title, _ in COLUMNS)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        m = r["metrics"]
        cells = [r["label"], ", ".join(r["overrides"]) or "-", f"{m['shift_residual_1_12']:.4f}",
                 f"{m[last_range(m)]:.4f}"]
        cells += [f"{m[key]:.{digits}f}" if key in m else "-" for key, _, digits in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("rows", nargs="+", help="LABEL=RUN_DIR[:key=value,...]")
    parser.add_argument("--frames", type=int, default=48)
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--name", default="video_long_clips")
    args = parser.parse_args()
    rows = []
    for label, run, overrides in map(parse_row, args.rows):
        rows.append({"label": label, "run": run, "overrides": overrides,
                     "metrics": score(run, overrides, args.frames, args.n, args.batch)})
        print(format_table(rows[-1:]).splitlines()[-1], flush=True)
    RESULTS.mkdir(exist_ok=True)
    record = {"frames": args.frames, "n": args.n, "rows": rows}
    (RESULTS / f"{args.name}.json").write_text(json.dumps(record, indent=2))
    table = format_table(rows)
    (RESULTS / f"{args.name}.md").write_text(f"{args.n} clips of {args.frames} frames a row, one draw of noise.\n\n"
                                             f"{table}\n")
    print(table)


if __name__ == "__main__":
    main()
