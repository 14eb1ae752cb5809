"""`potstill demo audio`: ARC post-training of the shipped tones teacher into a few-step student, then the student
at 1, 2 and 4 ping-pong steps beside the teacher's ODE sampler at NFE 1 to 32 (pitch accuracy, spectral purity and
partial spread, exact; FAD-toy; milliseconds per clip and the real-time factor), and a folder of the student's
clips as wav at its own 4 steps."""

from __future__ import annotations

import copy
import json
import time
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


def real_time_factor(metrics: dict, seconds_per_clip: float, decode_ms: float = 0.0) -> float:
    """Seconds of audio made per second of wall time, a codec's decoding (`decode_ms` a clip) included."""
    return seconds_per_clip / ((metrics["ms_per_sample"] + decode_ms) / 1000)


@torch.no_grad()
def decode_ms_per_clip(modality, n: int = 64) -> float:
    """Milliseconds a clip to turn the teacher's samples into clips (Griffin-Lim for spectrograms; a clamp without
    a codec). The time does not depend on the content, so noise is decoded."""
    samples = torch.randn(n, *modality.sample_shape)
    start = time.perf_counter()
    modality.to_data_range(samples)
    return (time.perf_counter() - start) * 1000 / n


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
    samples = distiller.ema.model.sample(noise.to(distiller.engine.device), cond.to(distiller.engine.device))
    return modality.save_samples(samples.cpu(), cond, folder)        # saving decodes a codec's samples


def run_audio_demo(out: Path, steps: int | None = None) -> dict:
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out}: already holds files; remove it or pass another --out")
    overrides = [f"eval.teacher_nfe={list(TEACHER_NFE)}"] + ([f"train.steps={steps}"] if steps is not None else [])
    distiller = distill(load_config(audio_config("arc"), overrides), out / "arc")
    report = json.loads((out / "arc" / "report.json").read_text())
    seconds = distiller.modality.data_shape[-1] / distiller.modality.sample_rate
    rows = [{"model": "teacher (ODE)", **t} for t in report["teacher"]]
    for k in STUDENT_STEPS:
        metrics = report["student"] if k == distiller.ema.model.nfe else student_at_steps(distiller, k)
        rows.append({"model": f"student ({k} step{'s' if k > 1 else ''})", **metrics, "nfe": k})
    decode_ms = decode_ms_per_clip(distiller.modality)
    for r in rows:
        r["real_time_factor"] = real_time_factor(r, seconds, decode_ms)
    report["decode_ms_per_clip"] = decode_ms
    report["table"] = rows
    report["clips"] = str(write_clips(distiller, out / "student_clips"))
    (out / "report.json").write_text(json.dumps(report, indent=2))
    print(format_table(rows))
    if decode_ms:
        print(f"decoding to clips: {decode_ms:.2f} ms a clip, in the real-time factor but not in ms per clip")
    print(f"clips: {report['clips']} ({distiller.ema.model.nfe} steps, {CLIPS_PER_CLASS} a class); "
          f"report: {out / 'report.json'}")
    return report
