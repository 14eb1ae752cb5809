"""Score moving-digits teacher files side by side: each teacher's ODE sampler at one NFE and several guidance
scales, every row on the same draw of noise and labels, with the video modality's law and classifier scores
(shift residual, velocity in set, FVD-toy, class recall). A row is LABEL=TEACHER_FILE (embedded:NAME works).

    python benchmarks/video_teachers.py "4 blocks=T4/teacher.safetensors" "6 blocks=T6/teacher.safetensors"
        [--nfe 24] [--guidance 1 3] [--n 300] [--name video_teachers]

Writes benchmarks/results/NAME.json and .md. This is how the shipped teacher's shape was chosen (README, Video)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from potstill.core.evaluation import evaluate_teacher
from potstill.core.teacher_file import build_trained_denoiser
from potstill.modalities.video import VideoModality, VideoOptions

RESULTS = Path(__file__).resolve().parent / "results"
COLUMNS = [("shift_residual", "shift residual", 3), ("velocity_in_set", "velocity in set", 3),
           ("fvd_toy", "FVD-toy", 1), ("class_recall_mean", "class recall", 3)]


def parse_row(text: str) -> tuple[str, str]:
    """LABEL=TEACHER_FILE -> (label, file)."""
    label, sep, path = text.partition("=")
    if not sep or not label or not path:
        raise SystemExit(f"row {text!r}: expected LABEL=TEACHER_FILE")
    return label, path


def score(path: str, nfe: int, guidance: list[float], n: int, batch: int) -> dict[str, dict[str, float]]:
    """The teacher's metrics at `nfe` for each guidance scale (keyed by the scale as text)."""
    teacher = build_trained_denoiser(path, "row")
    modality = VideoModality(VideoOptions(), teacher)
    return {str(g): evaluate_teacher(modality, teacher, nfe, n, batch, guidance=g) for g in guidance}


def format_table(rows: list[dict]) -> str:
    header = ["teacher", "guidance", *(title for _, title, _ in COLUMNS)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        for g, m in r["metrics"].items():
            cells = [r["label"], g, *(f"{m[key]:.{digits}f}" for key, _, digits in COLUMNS)]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("rows", nargs="+", help="LABEL=TEACHER_FILE")
    parser.add_argument("--nfe", type=int, default=24)
    parser.add_argument("--guidance", type=float, nargs="+", default=[1.0, 3.0])
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--name", default="video_teachers")
    args = parser.parse_args()
    rows = []
    for label, path in map(parse_row, args.rows):
        rows.append({"label": label, "teacher": path, "metrics": score(path, args.nfe, args.guidance, args.n,
                                                                      args.batch)})
        print(format_table(rows[-1:]).split("\n", 2)[-1], flush=True)
    RESULTS.mkdir(exist_ok=True)
    record = {"nfe": args.nfe, "guidance": args.guidance, "n": args.n, "rows": rows}
    (RESULTS / f"{args.name}.json").write_text(json.dumps(record, indent=2))
    table = format_table(rows)
    (RESULTS / f"{args.name}.md").write_text(f"{args.n} clips a row at NFE {args.nfe}, one draw of noise and "
                                             f"labels.\n\n{table}\n")
    print(table)


if __name__ == "__main__":
    main()
