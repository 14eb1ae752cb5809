"""Speed against quality for audio: the teacher's ODE sampler at NFE 1 to 64 and a distilled student at 1, 2 and
4 ping-pong steps, on the same conditions and noise (the evaluation seed), scored by the tones law exactly (pitch
accuracy, purity) and by FAD-toy; speed as the real-time factor (seconds of audio per wall second, best of
`--repeats`, a codec's decoding included). The ratio: the speed-up at equal quality, the smallest teacher NFE
whose FAD-toy is no worse than the student's, over the student's steps (target at least 8, goal 16).

    python benchmarks/audio_speed.py RUN [--n 500] [--threads 2] [--device cpu]

RUN is a distillation run of the tones teacher (e.g. `potstill distill configs/audio/tones_arc.yaml --out RUN`).
Writes benchmarks/results/audio_speed.json and .md."""

from __future__ import annotations

import argparse
import copy
import json
import platform
import time
from pathlib import Path

import torch

from potstill.core.evaluation import EVAL_SEED
from potstill.core.samplers import sample
from potstill.runs import open_run

RESULTS = Path(__file__).resolve().parent / "results"
TEACHER_NFE = [1, 2, 4, 8, 16, 32, 64]
STUDENT_STEPS = [1, 2, 4]
SCORES = ("pitch_accuracy", "pitch_accuracy_min", "purity", "purity_min", "partial_spread", "fad_toy")


def fixed_inputs(distiller, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    noise, cond = distiller.modality.draw_inputs(n, torch.Generator().manual_seed(EVAL_SEED))
    return noise.to(distiller.engine.device), cond.to(distiller.engine.device)


@torch.no_grad()
def measure(distiller, produce, noise, cond, repeats: int) -> dict:
    """Scores of `produce(noise, cond)` and its best wall time over `repeats` runs, to clips: a codec's decoding
    (Griffin-Lim for spectrograms) is timed with the sampler."""
    modality = distiller.modality
    best = float("inf")
    for _ in range(repeats):
        torch.manual_seed(EVAL_SEED)
        start = time.perf_counter()
        clips = modality.to_data_range(produce(noise, cond).float()).cpu()
        best = min(best, time.perf_counter() - start)
    metrics = modality.evaluate_data(clips, cond.cpu())
    audio_seconds = len(noise) * modality.data_shape[-1] / modality.sample_rate
    return {**{k: metrics[k] for k in SCORES if k in metrics}, "seconds": best,
            "real_time_factor": audio_seconds / best}


def student_with_steps(distiller, steps: int):
    student = copy.deepcopy(distiller.ema.model).eval()
    student.use_steps(steps)
    return student.sample


def speedup_at_equal_quality(teacher: list[dict], student: dict, steps: int) -> dict:
    """The smallest teacher NFE with FAD-toy no worse than the student's, over the student's steps."""
    matching = [row["nfe"] for row in teacher if row["fad_toy"] <= student["fad_toy"]]
    if not matching:
        return {"teacher_nfe": None, "speedup": None}
    return {"teacher_nfe": min(matching), "speedup": min(matching) / steps}


def markdown(results: dict) -> str:
    lines = [f"Run {results['run']}; device {results['device']}, torch {results['torch']}, {results['threads']} "
             f"threads; {results['n']} clips of {results['clip_seconds']:.3f} s at {results['sample_rate']} Hz, the "
             f"same conditions and noise for every row; wall time best of {results['repeats']}.", "",
             "| sampler | NFE | pitch accuracy (mean / min) | purity (mean / min) | partial spread | FAD-toy | "
             "real-time factor |", "|---|---|---|---|---|---|---|"]
    for row in results["teacher"] + results["student"]:
        spread = f"{row['partial_spread']:.3f}" if "partial_spread" in row else "-"   # a law with no lone partials
        lines.append(f"| {row['sampler']} | {row['nfe']} | {row['pitch_accuracy']:.3f} / "
                     f"{row['pitch_accuracy_min']:.3f} | {row['purity']:.3f} / {row['purity_min']:.3f} | "
                     f"{spread} | {row['fad_toy']:.3f} | {row['real_time_factor']:.0f} |")
    lines += ["", "| student steps | teacher NFE at equal FAD-toy | speed-up at equal quality |", "|---|---|---|"]
    for row in results["speedup"]:
        nfe = row["teacher_nfe"] if row["teacher_nfe"] is not None else f"> {TEACHER_NFE[-1]}"
        beyond = f"> {TEACHER_NFE[-1] / row['steps']:.0f}x"
        speedup = f"{row['speedup']:g}x" if row["speedup"] is not None else beyond
        lines.append(f"| {row['steps']} | {nfe} | {speedup} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run")
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    distiller = open_run(args.run, args.device)
    if distiller.modality.classifier is None:
        raise SystemExit("audio_speed: the run's modality has no classifier, so no FAD-toy to match quality by")
    noise, cond = fixed_inputs(distiller, args.n)
    teacher = [{"sampler": "teacher (ODE)", "nfe": nfe,
                **measure(distiller, lambda z, c, k=nfe: sample(distiller.teacher, z, c, k), noise, cond,
                          args.repeats)} for nfe in TEACHER_NFE]
    student = [{"sampler": "student (ping-pong)", "nfe": k,
                **measure(distiller, student_with_steps(distiller, k), noise, cond, args.repeats)}
               for k in STUDENT_STEPS]
    modality = distiller.modality
    results = {"run": str(args.run), "device": args.device if args.device != "cpu" else platform.processor() or "cpu",
               "torch": torch.__version__, "threads": args.threads, "n": args.n, "repeats": args.repeats,
               "sample_rate": modality.sample_rate, "clip_seconds": modality.data_shape[-1] / modality.sample_rate,
               "teacher": teacher, "student": student,
               "speedup": [{"steps": row["nfe"], **speedup_at_equal_quality(teacher, row, row["nfe"])}
                           for row in student]}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "audio_speed.json").write_text(json.dumps(results, indent=2))
    (RESULTS / "audio_speed.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
