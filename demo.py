"""`potstill demo`: distil the embedded digits teacher into a one-step student, then compare the
student with the teacher's sampler at NFE 1, 2, 4, 8 and 35 (FDD, class recall, ms per sample)."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import torch

from potstill.core.config import load_config
from potstill.data.digits import pack_digits
from potstill.data.shards import expand_shards
from potstill.grid_figure import save_labelled_panels
from potstill.runs import distill

TEACHER_NFE = (1, 2, 4, 8, 35)
REFERENCE_NFE = 35


def demo_config_path() -> Path:
    return Path(str(resources.files("potstill.configs.image") / "digits_demo.yaml"))


def format_table(rows: list[dict]) -> str:
    lines = ["| model | NFE | FDD | class recall (mean / min) | ms per sample |", "|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['model']} | {row['nfe']} | {row['fdd']:.3f} | "
                     f"{row['class_recall_mean']:.3f} / {row['class_recall_min']:.3f} | {row['ms_per_sample']:.4f} |")
    return "\n".join(lines)


@torch.no_grad()
def comparison_grid(distiller, path: Path, per_class: int = 8, scale: int = 4) -> Path:
    """The teacher at NFE 35 above the one-step student, the same noise and labels, one column per class, enlarged
    `scale` times without smoothing and labelled."""
    from potstill.core.samplers import default_solver, sample

    classes = distiller.modality.num_classes
    cond = torch.arange(classes).repeat(per_class)
    noise = torch.randn(len(cond), *distiller.modality.sample_shape, generator=torch.Generator().manual_seed(7))
    teacher = sample(distiller.teacher, noise, cond, nfe=REFERENCE_NFE)
    student = distiller.ema.model.sample(noise, cond)
    panels = [(f"teacher, {REFERENCE_NFE} evaluations ({default_solver(REFERENCE_NFE)})", (teacher + 1) / 2),
              ("student, one step", (student + 1) / 2)]
    return save_labelled_panels(path, panels, classes, scale, [str(c) for c in range(classes)])


def ensure_real_shards(shards: str) -> None:
    """Pack the digits into the shards the demo config streams, the first time."""
    try:
        expand_shards(shards)
    except FileNotFoundError:
        print(pack_digits().describe())


def run_demo(out: Path, steps: int | None = None) -> dict:
    if steps is not None and steps < 1:
        raise ValueError(f"--steps {steps}: the demo needs at least 1 training step")
    overrides = [f"eval.teacher_nfe={list(TEACHER_NFE)}"] + ([f"train.steps={steps}"] if steps is not None else [])
    config = load_config(demo_config_path(), overrides)
    out = Path(out)
    if (out / "checkpoints").exists():
        raise FileExistsError(f"{out}: already holds a run; remove it or pass another --out")
    if config.real_data is not None and config.real_data.kind == "webdataset":
        ensure_real_shards(config.real_data.options.shards)
    distiller = distill(config, out, resume=False)
    report = json.loads((out / "report.json").read_text())
    rows = [{"model": "teacher", **row} for row in report["teacher"]]
    rows.append({"model": "student (one step)", **report["student"]})
    report["table"] = rows
    report["grid"] = str(comparison_grid(distiller, out / "teacher_vs_student.png"))
    (out / "report.json").write_text(json.dumps(report, indent=2))
    print(format_table(rows))
    print(f"samples: {report['grid']} (teacher NFE 35 above, one-step student below)")
    print(f"report: {out / 'report.json'}")
    return report
