"""`potstill demo`: distil the embedded digits teacher into a one-step student, then compare the
student with the teacher's sampler at NFE 1, 2, 4, 8 and 35 (FDD, class recall, ms per sample)."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import torch
from torchvision.utils import save_image

from potstill.core.config import load_config
from potstill.data.digits import pack_digits
from potstill.data.shards import expand_shards
from potstill.runs import distill

TEACHER_NFE = (1, 2, 4, 8, 35)


def demo_config_path() -> Path:
    return Path(str(resources.files("potstill.configs.image") / "digits_dmd2.yaml"))


def format_table(rows: list[dict]) -> str:
    lines = ["| model | NFE | FDD | class recall (mean / min) | ms per sample |", "|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['model']} | {row['nfe']} | {row['fdd']:.3f} | "
                     f"{row['class_recall_mean']:.3f} / {row['class_recall_min']:.3f} | {row['ms_per_sample']:.4f} |")
    return "\n".join(lines)


@torch.no_grad()
def comparison_grid(distiller, path: Path, per_class: int = 8) -> Path:
    """Teacher (NFE 35) above the one-step student, the same labels and noise, one column per class."""
    from potstill.core.samplers import sample

    classes = distiller.modality.num_classes
    cond = torch.arange(classes).repeat_interleave(per_class)
    noise = torch.randn(len(cond), *distiller.modality.sample_shape, generator=torch.Generator().manual_seed(7))
    teacher = sample(distiller.teacher, noise, cond, nfe=35)
    student = distiller.ema.model.sample(noise, cond)
    grid = torch.cat([teacher, torch.full_like(teacher[:classes], -1), student])
    save_image((grid.clamp(-1, 1) + 1) / 2, path, nrow=per_class * 2, padding=1)
    return path


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
