"""Where a video student's digit changes class, against its teacher: in each window of the teacher's clip length
(8 frames on the shipped toy), whether the shipped toy classifier gives the window's first half and second half
one class. Student rows stream --frames frames from one draw of noise and labels; teacher rows sample clips of
its own length at each guidance scale; a row of real clips from the teacher's law calibrates (1 on every window).
A student row is LABEL=RUN_DIR[:key=value,...]; the teacher is the first row's.

    python benchmarks/video_class_windows.py "Self-Forcing=runs/sf" "ODE initialisation=runs/ode"
        [--frames 48] [--teacher-nfe 24] [--teacher-guidance 2 3] [--n 500] [--batch 50] [--name video_class_windows]

Writes benchmarks/results/NAME.json and .md."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from video_long_clips import parse_row

from potstill.core.evaluation import EVAL_SEED, draw_samples
from potstill.core.samplers import sample as teacher_sample
from potstill.data.moving_digits import moving_digit_clips
from potstill.modalities.video import VideoModality
from potstill.modalities.video_scores import class_kept
from potstill.runs import open_run

RESULTS = Path(__file__).resolve().parent / "results"


def window_class_kept(modality: VideoModality, clips: torch.Tensor, window: int) -> list[float]:
    """Per window of `window` frames from the clip's start: the share of clips whose window halves the
    classifier gives one class."""
    half = window // 2
    kept = []
    for start in range(0, clips.shape[2] - window + 1, window):
        first = modality.classify(clips[:, :, start:start + half])[0]
        second = modality.classify(clips[:, :, start + half:start + window])[0]
        kept.append(class_kept(first, second)["class_kept"])
    return kept


def format_table(rows: list[dict], window: int) -> str:
    windows = max(len(r["kept"]) for r in rows)
    header = ["clips", *(f"frames {w * window + 1}-{(w + 1) * window}" for w in range(windows))]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = [f"{v:.3f}" for v in r["kept"]] + ["-"] * (windows - len(r["kept"]))
        lines.append(f"| {r['label']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("rows", nargs="+", help="LABEL=RUN_DIR[:key=value,...]")
    parser.add_argument("--frames", type=int, default=48)
    parser.add_argument("--teacher-nfe", type=int, default=24)
    parser.add_argument("--teacher-guidance", type=float, nargs="*", default=[2.0, 3.0])
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--name", default="video_class_windows")
    args = parser.parse_args()
    rows, first = [], None
    for label, run, overrides in map(parse_row, args.rows):
        distiller = open_run(run, overrides=[f"modality.frames={args.frames}", *overrides])
        first = first or open_run(run, overrides=overrides)
        window = first.modality.sample_shape[1]
        distiller.ema.model.eval()
        clips = draw_samples(distiller.modality, distiller.ema.model.sample, args.n, args.batch)[0]
        rows.append({"label": label, "run": run, "overrides": overrides,
                     "kept": window_class_kept(distiller.modality, clips, window)})
        print(format_table(rows[-1:], window).splitlines()[-1], flush=True)
    for guidance in args.teacher_guidance:
        clips = draw_samples(first.modality, lambda z, c, g=guidance: teacher_sample(first.teacher, z, c,
                                                                                    args.teacher_nfe, guidance=g),
                             args.n, args.batch)[0]
        rows.append({"label": f"teacher, NFE {args.teacher_nfe}, guidance {guidance:g}",
                     "kept": window_class_kept(first.modality, clips, window)})
        print(format_table(rows[-1:], window).splitlines()[-1], flush=True)
    law = first.modality.law
    real, _ = moving_digit_clips(args.n, law.canvas, args.frames, law.velocities,
                                 torch.Generator().manual_seed(EVAL_SEED), law.digits)
    rows.append({"label": "real clips of the teacher's law", "kept": window_class_kept(first.modality, real, window)})
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps({"frames": args.frames, "window": window, "n": args.n,
                                                           "rows": rows}, indent=2))
    table = format_table(rows, window)
    (RESULTS / f"{args.name}.md").write_text(
        f"{args.n} clips a row, the evaluation's draw of noise and labels (seed {EVAL_SEED}); in each window of "
        f"{window} frames, the share of clips whose first and second {window // 2} frames the toy classifier gives "
        f"one class. Students stream {args.frames} frames; the teacher samples its own {window}.\n\n{table}\n")
    print(table)


if __name__ == "__main__":
    main()
