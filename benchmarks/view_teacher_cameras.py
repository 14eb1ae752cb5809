"""Does a shapes3d view teacher draw what its camera sees? From exact views noised to t, the teacher's clean-view
prediction's silhouette against the exact silhouette of the same camera and of the camera turned 90 degrees in
azimuth. A teacher that follows the azimuth scores higher against its own camera; where the two exact views are
one (every shape but the box, from the side), the columns agree. High t is where SDS and CFD read the teacher
most, and where the view is decided by its condition alone. Also each shape's views from the teacher's own
unguided ODE sampler (`--nfe` Euler steps, random cameras from its range) against the exact renders.

    python benchmarks/view_teacher_cameras.py "shipped=embedded:shapes_teacher" "ray map=T/teacher.safetensors"
        [--times 0.9 0.6 0.3] [--azimuths 36] [--nfe 24] [--n 256] [--name view_teacher_cameras]

Writes benchmarks/results/NAME.json and .md."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from video_teachers import parse_row

from potstill.backbones.cameras import turntable_cameras
from potstill.backbones.view_dit import view_condition
from potstill.core.evaluation import evaluate_teacher
from potstill.core.teacher_file import build_trained_denoiser, teacher_data
from potstill.data.shapes3d import ShapesOptions, render_shape
from potstill.modalities.shape_scores import silhouette_iou
from potstill.modalities.text_to_3d import INK, TextTo3DModality, TextTo3DOptions

RESULTS = Path(__file__).resolve().parent / "results"
ELEVATION = 10.0


@torch.no_grad()
def score(checkpoint: str, times: list[float], count: int, nfe: int, n: int) -> dict[str, dict[str, float]]:
    """Per shape and t: the prediction's silhouette IoU against its own camera's view and the turned one's; and
    the scores of the teacher's `nfe`-step views. `count` turntable cameras, a multiple of 4: camera k turned 90
    degrees is camera k + count / 4."""
    teacher = build_trained_denoiser(checkpoint, "row")
    data = teacher_data(teacher, "shapes3d")
    if data is None:
        raise SystemExit(f"{checkpoint}: not a shapes3d teacher (its metadata names no shapes3d data)")
    shapes = ShapesOptions(**{k: v for k, v in data.items() if k != "kind"})
    cameras = turntable_cameras(count, ELEVATION)
    noise = torch.randn(count, 3, shapes.image_size, shapes.image_size, generator=torch.Generator().manual_seed(0))
    rows = {}
    for label, spec in enumerate(shapes.specs):
        views, silhouette, _ = render_shape(spec, cameras, shapes.image_size)
        turned_silhouette = silhouette.roll(-(count // 4), dims=0)
        cond = view_condition(torch.full((count,), label), cameras)
        row = {"exact_views_iou": silhouette_iou(silhouette, turned_silhouette)}
        for t in times:
            t_batch = torch.full((count,), t)
            x0 = teacher.x0(teacher.schedule.add_noise(views * 2 - 1, noise, t_batch), t_batch, cond)
            inked = (1 - (x0.clamp(-1, 1) + 1) / 2).amax(1) > INK
            row[f"own_{t}"] = silhouette_iou(inked, silhouette)
            row[f"turned_{t}"] = silhouette_iou(inked, turned_silhouette)
        sampled = evaluate_teacher(TextTo3DModality(TextTo3DOptions(shape=spec.name), teacher), teacher, nfe, n, 64)
        row |= {f"sampled_{k}": sampled[k] for k in ("view_error", "silhouette_iou", "colour_error")}
        rows[spec.name] = row
    return rows


def format_table(records: list[dict], times: list[float], nfe: int) -> str:
    header = ["teacher", "shape", *(f"t = {t}: own / turned" for t in times), "exact views: own / turned",
              f"{nfe}-step views: view error", "silhouette IoU", "colour error"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for record in records:
        for shape, row in record["shapes"].items():
            cells = [record["label"], shape, *(f"{row[f'own_{t}']:.3f} / {row[f'turned_{t}']:.3f}" for t in times),
                     f"1.000 / {row['exact_views_iou']:.3f}", f"{row['sampled_view_error']:.4f}",
                     f"{row['sampled_silhouette_iou']:.3f}", f"{row['sampled_colour_error']:.3f}"]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("rows", nargs="+", help="LABEL=TEACHER_FILE (a path or embedded:NAME)")
    parser.add_argument("--times", type=float, nargs="+", default=[0.9, 0.6, 0.3])
    parser.add_argument("--azimuths", type=int, default=36, help="a multiple of 4")
    parser.add_argument("--nfe", type=int, default=24)
    parser.add_argument("--n", type=int, default=256, help="views a shape from the sampler")
    parser.add_argument("--name", default="view_teacher_cameras")
    args = parser.parse_args()
    if args.azimuths % 4:
        raise SystemExit(f"--azimuths {args.azimuths}: must be a multiple of 4 (each camera's view turned 90 degrees "
                         "is another's)")
    records = []
    for label, checkpoint in map(parse_row, args.rows):
        records.append({"label": label, "checkpoint": checkpoint,
                        "shapes": score(checkpoint, args.times, args.azimuths, args.nfe, args.n)})
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps({"times": args.times, "azimuths": args.azimuths,
                                                           "elevation_deg": ELEVATION, "nfe": args.nfe, "n": args.n,
                                                           "rows": records}, indent=2))
    table = format_table(records, args.times, args.nfe)
    (RESULTS / f"{args.name}.md").write_text(
        f"Silhouette IoU of the teacher's clean-view prediction from exact views noised to t, {args.azimuths} "
        f"azimuths at elevation {ELEVATION:g} degrees, one draw of noise: against the exact view of its own camera "
        f"and of the camera turned 90 degrees; then {args.n} views a shape from the teacher's {args.nfe}-step "
        f"unguided ODE sampler from random cameras in its range, against the exact renders.\n\n{table}\n")
    print(table)


if __name__ == "__main__":
    main()
