"""`potstill demo video`: from the shipped moving-digits teacher, an ODE initialisation of the causal student,
then Self-Forcing (DMD through the student's own KV-cached rollout); then the student streams 48 frames, six
times the clips it was trained on, and is scored beside the teacher's ODE sampler on 8-frame clips."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import torch

from potstill.core.config import load_config
from potstill.core.evaluation import evaluate_generator
from potstill.runs import distill, open_run

TEACHER_NFE = (4, 8, 24)   # the student's NFE, twice it, and the slow reference
LONG_FRAMES = 48


def video_config(name: str) -> Path:
    return Path(str(resources.files("potstill.configs.video") / f"moving_digits_{name}.yaml"))


def row(model: str, frames: int, metrics: dict) -> dict:
    ranges = sorted((k for k in metrics if k.startswith("shift_residual_")), key=lambda k: int(k.split("_")[2]))
    return {"model": model, "nfe": metrics["nfe"], "frames": frames,
            "residual_first": metrics[ranges[0]], "residual_last": metrics[ranges[-1]],
            "last_range": ranges[-1].removeprefix("shift_residual_").replace("_", "-"), **metrics}


def format_table(rows: list[dict]) -> str:
    lines = ["| model | NFE | frames | shift residual, frames 1-12 | shift residual, last 12 | velocity in set | "
             "class recall (mean / min) | class recall, last 12 | class kept, first to last 12 | FVD-toy | "
             "ms per clip |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        kept, last = (f"{r[k]:.3f}" if k in r else "-" for k in ("class_kept", "class_recall_last"))
        lines.append(f"| {r['model']} | {r['nfe']} | {r['frames']} | {r['residual_first']:.4f} | "
                     f"{r['residual_last']:.4f} ({r['last_range']}) | {r['velocity_in_set']:.3f} | "
                     f"{r['class_recall_mean']:.3f} / {r['class_recall_min']:.3f} | {last} | {kept} | "
                     f"{r['fvd_toy']:.3f} | {r['ms_per_sample']:.1f} |")
    return "\n".join(lines)


@torch.no_grad()
def streaming_latency(distiller, clips: int = 8) -> dict:
    """Milliseconds per chunk while streaming LONG_FRAMES frames for a batch of `clips`."""
    noise, cond = distiller.draw_inputs(clips, torch.Generator().manual_seed(0))
    seconds = [s for _, s in distiller.ema.model.stream(noise, cond)]
    return {"chunks": len(seconds), "first_chunk_ms": 1000 * seconds[0],
            "mean_chunk_ms": 1000 * sum(seconds) / len(seconds), "clips": clips}


@torch.no_grad()
def long_samples(distiller, clips: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Streamed clips of the fixed inputs, in the data range, with their labels (for the mp4)."""
    noise, cond = distiller.fixed_inputs(clips)
    return distiller.modality.to_data_range(distiller.ema.model.sample(noise, cond)), cond


def run_video_demo(out: Path, steps: int | None = None) -> dict:
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out}: already holds files; remove it or pass another --out")
    limit = [f"train.steps={steps}"] if steps is not None else []
    distill(load_config(video_config("ode_init"), limit), out / "ode_init")
    forcing = load_config(video_config("self_forcing"), [*limit, f"generator.init_from={out / 'ode_init'}",
                                                         f"eval.teacher_nfe={list(TEACHER_NFE)}"])
    distill(forcing, out / "self_forcing")
    report = json.loads((out / "self_forcing" / "report.json").read_text())
    long = open_run(out / "self_forcing", overrides=[f"modality.frames={LONG_FRAMES}"])
    frames = long.teacher.sample_shape[1]
    rows = [row("teacher (bidirectional ODE)", frames, t) for t in report["teacher"]]
    rows.append(row("student (causal, streamed)", frames, report["student"]))
    e = long.config.eval
    rows.append(row("student (causal, streamed)", LONG_FRAMES,
                    evaluate_generator(long.modality, long.ema.model, e.n_samples, e.batch_size, long.engine.device)))
    report["table"] = rows
    report["streaming"] = streaming_latency(long)
    report["long_clips"] = str(long.modality.save_samples(*long_samples(long), out / "streamed_48_frames.mp4"))
    (out / "report.json").write_text(json.dumps(report, indent=2))
    print(format_table(rows))
    s = report["streaming"]
    print(f"streaming {LONG_FRAMES} frames, {s['clips']} clips at once: first chunk after {s['first_chunk_ms']:.1f} "
          f"ms, {s['mean_chunk_ms']:.1f} ms per chunk of {long.generator.chunk_frames} frames")
    print(f"clips: {report['long_clips']}; report: {out / 'report.json'}")
    return report
