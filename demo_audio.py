"""`potstill demo audio`: ARC post-training of the shipped tones teacher into a few-step student, then the student
at 1, 2 and 4 ping-pong steps beside the teacher's ODE sampler at NFE 1 to 32 (pitch accuracy, spectral purity and
partial spread, exact; FAD-toy; milliseconds per clip and the real-time factor), and a folder of the student's
clips as wav at its own 4 steps."""

from __future__ import annotations

import copy
import json
from importlib import resources
from pathlib import Path

import torch

from potstill.core.config import load_config
from potstill.core.evaluation import evaluate_generator
from potstill.runs import distill

TEACHER_NFE = (1, 2, 4, 8, 16, 32)
STUDENT_STEPS = (1, 2, 4)
CLIPS_PER_CLASS = 4


def audio_config(name: str) -> Path:
    return Path(str(resources.files("potstill.configs.audio") / f"tones_{name}.yaml"))


def real_time_factor(metrics: dict, seconds_per_clip: float) -> float:
    """Seconds of audio made per second of wall time."""
    return seconds_per_clip / (metrics["ms_per_sample"] / 1000)


def format_table(rows: list[dict]) -> str:
    lines = ["| model | NFE | pitch accuracy (mean / min) | purity (mean / min) | partial spread | FAD-toy | "
             "ms per clip | real-time factor |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        spread, fad = (f"{r[k]:.3f}" if k in r else "-" for k in ("partial_spread", "fad_toy"))
        lines.append(f"| {r['model']} | {r['nfe']} | {r['pitch_accuracy']:.3f} / {r['pitch_accuracy_min']:.3f} | "
                     f"{r['purity']:.3f} / {r['purity_min']:.3f} | {spread} | {fad} | {r['ms_per_sample']:.2f} | "
                     f"{r['real_time_factor']:.0f} |")
    return "\n".join(lines)


@torch.no_grad()
def student_at_steps(distiller, steps: int) -> dict:
    """The EMA student's scores when it samples in `steps` ping-pong steps."""
    student = copy.deepcopy(distiller.ema.model)
    student.use_steps(steps)
    e = distiller.config.eval
    return evaluate_generator(distiller.modality, student, e.n_samples, e.batch_size, distiller.engine.device)


@torch.no_grad()
def write_clips(distiller, folder: Path) -> Path:
    """CLIPS_PER_CLASS clips of every class at the student's own steps, as wav files and a spectrogram grid."""
    modality = distiller.modality
    cond = torch.arange(modality.num_classes).repeat_interleave(CLIPS_PER_CLASS)
    noise = torch.randn(len(cond), *modality.sample_shape, generator=torch.Generator().manual_seed(7))
    samples = modality.to_data_range(distiller.ema.model.sample(noise.to(distiller.engine.device),
                                                                cond.to(distiller.engine.device)).cpu())
    return modality.save_samples(samples, cond, folder)


def run_audio_demo(out: Path, steps: int | None = None) -> dict:
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out}: already holds files; remove it or pass another --out")
    overrides = [f"eval.teacher_nfe={list(TEACHER_NFE)}"] + ([f"train.steps={steps}"] if steps is not None else [])
    distiller = distill(load_config(audio_config("arc"), overrides), out / "arc")
    report = json.loads((out / "arc" / "report.json").read_text())
    seconds = distiller.modality.sample_shape[-1] / distiller.modality.sample_rate
    rows = [{"model": "teacher (ODE)", **t} for t in report["teacher"]]
    for k in STUDENT_STEPS:
        metrics = report["student"] if k == distiller.ema.model.nfe else student_at_steps(distiller, k)
        rows.append({"model": f"student ({k} step{'s' if k > 1 else ''})", **metrics, "nfe": k})
    for r in rows:
        r["real_time_factor"] = real_time_factor(r, seconds)
    report["table"] = rows
    report["clips"] = str(write_clips(distiller, out / "student_clips"))
    (out / "report.json").write_text(json.dumps(report, indent=2))
    print(format_table(rows))
    print(f"clips: {report['clips']} ({distiller.ema.model.nfe} steps, {CLIPS_PER_CLASS} a class); "
          f"report: {out / 'report.json'}")
    return report
