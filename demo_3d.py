"""`potstill demo 3d`: the shipped shapes teacher distilled into a voxel grid of one shape by SDS and by CFD, each
field scored against the analytic shape (views: mean error against the exact renders, silhouette IoU, colour
error; the field: surface-point Chamfer distance and F-score, silhouette IoU from all round, surface colour),
beside the teacher's own views from the same cameras, and exported as a PLY and a turntable."""

from __future__ import annotations

import json
import time
from importlib import resources
from pathlib import Path

from potstill.core.config import load_config
from potstill.core.evaluation import evaluate_teacher
from potstill.export3d import ExportRequest, export_run
from potstill.runs import distill

DEMO_SHAPE = "blue_ring"
OBJECTIVES = ("sds", "cfd")
TEACHER_NFE = 24
COLUMNS = [("view_error", "view error", 4), ("silhouette_iou", "view IoU", 3), ("colour_error", "colour error", 3),
           ("f_score", "F-score", 3), ("chamfer", "Chamfer", 4), ("field_iou", "field IoU", 3),
           ("surface_colour_error", "surface colour error", 3)]


def config_path(name: str) -> Path:
    return Path(str(resources.files("potstill.configs.text_to_3d") / f"shapes_{name}.yaml"))


def format_table(rows: list[dict]) -> str:
    lines = ["| model | seconds | " + " | ".join(title for _, title, _ in COLUMNS) + " |",
             "|---|---|" + "---|" * len(COLUMNS)]
    for r in rows:
        cells = [f"{r[key]:.{digits}f}" if key in r else "-" for key, _, digits in COLUMNS]
        seconds = f"{r['seconds']:.0f}" if "seconds" in r else "-"
        lines.append(f"| {r['model']} | {seconds} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_3d_demo(out: Path, steps: int | None = None, shape: str = DEMO_SHAPE) -> dict:
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out}: already holds files; remove it or pass another --out")
    overrides = [f"modality.shape={shape}"] + ([f"train.steps={steps}"] if steps is not None else [])
    rows, files = [], {}
    for name in OBJECTIVES:
        start = time.perf_counter()
        distiller = distill(load_config(config_path(name), overrides), out / name)
        report = json.loads((out / name / "report.json").read_text())
        rows.append({"model": f"{name} (voxel grid)", "seconds": time.perf_counter() - start, **report["student"]})
        files[name] = [str(p) for p in export_run(ExportRequest(str(out / name), out / f"{name}.ply",
                                                                out / f"{name}_turntable.png", frames=12))]
    e = distiller.config.eval
    teacher = evaluate_teacher(distiller.modality, distiller.teacher, TEACHER_NFE, e.n_samples, e.batch_size,
                               distiller.engine.device)
    rows.insert(0, {"model": f"teacher views ({TEACHER_NFE} steps)", **teacher})
    summary = {"shape": shape, "table": rows, "files": files}
    (out / "report.json").write_text(json.dumps(summary, indent=2))
    print(format_table(rows))
    print("files: " + ", ".join(p for paths in files.values() for p in paths) + f"; report: {out / 'report.json'}")
    return summary
