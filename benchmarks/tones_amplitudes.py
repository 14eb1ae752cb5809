"""How close a tones teacher's amplitude law is to the real one, class by class. On a real clip every partial's
amplitude is its harmonic weight times the clip's one gain, so `partial_spread` (modalities/audio_scores.py) is 0
and the pitch is always right. Two reference rows bracket the teacher: the real law, and the Gaussian law with the
real clips' mean power on the same bins (random complex coefficients, the law a linear denoiser learns), whose
partials have independent Rayleigh amplitudes. `noise_correlation`, for the teacher's ODE, is the correlation
between a fundamental's amplitude in the sample and in the noise it came from (1 for a linear flow, lower where
the shared gain couples the partials; waveform teachers only, a codec's noise has no bins). `gain_distance`
scores the law of the clips' one gain (modalities/audio_scores.py).

    python benchmarks/tones_amplitudes.py [TEACHER_FILE] [--n 128] [--nfe 32] [--threads 2]

TEACHER_FILE defaults to the shipped tones teacher (`embedded:tones_teacher`). Writes
benchmarks/results/tones_amplitudes.json and .md."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import torch

from potstill.core.codec import build_codec
from potstill.core.samplers import sample
from potstill.core.teacher_file import build_trained_denoiser
from potstill.data.tones import TonesOptions, tone_clips
from potstill.modalities.audio import tones_law_of
from potstill.modalities.audio_scores import (
    clip_gains,
    gain_distance,
    partial_spreads,
    pitches_correct,
    power_spectrum,
)

RESULTS = Path(__file__).resolve().parent / "results"


def gaussian_law_clips(real: torch.Tensor) -> torch.Tensor:
    """Clips with the real clips' mean power on every bin and independent Gaussian coefficients."""
    spectrum = torch.fft.rfft(real.double(), dim=-1)
    scale = spectrum.abs().pow(2).mean(0, keepdim=True).div(2).sqrt()
    generator = torch.Generator().manual_seed(1)
    draw = torch.complex(torch.randn(spectrum.shape, generator=generator, dtype=torch.float64),
                         torch.randn(spectrum.shape, generator=generator, dtype=torch.float64))
    return torch.fft.irfft(draw * scale, n=real.shape[-1], dim=-1).float()


def class_scores(clips: torch.Tensor, label: int, law: TonesOptions, noise_amplitude=None) -> dict:
    fundamentals = law.classes[label]
    power = power_spectrum(clips)
    labels = torch.full((len(clips),), label)
    loudest_is_fundamental = torch.isin(power.argmax(1), torch.tensor(fundamentals))
    spread = partial_spreads(power, labels, law)
    gains = clip_gains(power, labels, law)
    scores = {"pitch_accuracy": float(pitches_correct(power, labels, law).double().mean()),
              "strongest_is_fundamental": float(loudest_is_fundamental.double().mean()),
              **({} if spread.isnan().all() else {"partial_spread": float(spread.mean())}),
              **({} if gains.isnan().all() else {"gain_distance": gain_distance(gains, law)})}
    if noise_amplitude is not None:
        out = power[:, fundamentals].sqrt()
        scores["noise_correlation"] = float(torch.stack(
            [torch.corrcoef(torch.stack([out[:, i], noise_amplitude[:, i]]))[0, 1] for i in range(len(fundamentals))]
        ).mean())
    return scores


@torch.no_grad()
def measure(teacher_file: str, n: int, nfe: int) -> dict:
    teacher = build_trained_denoiser(teacher_file).eval()
    law = tones_law_of(teacher)
    if law is None:
        raise SystemExit(f"{teacher_file}: not a tones teacher (its metadata records no tones law)")
    codec = build_codec(None, None, teacher)
    rows = []
    for label, fundamentals in enumerate(law.classes):
        real, _ = tone_clips(n, replace(law, classes=[fundamentals]), torch.Generator().manual_seed(label))
        noise = torch.randn(n, *teacher.sample_shape, generator=torch.Generator().manual_seed(100 + label))
        samples = sample(teacher, noise, torch.full((n,), label), nfe)
        clips = codec.decode(samples) if codec is not None else samples
        noise_amplitude = None if codec is not None else power_spectrum(noise)[:, fundamentals].sqrt()
        rows.append({"class": label, "fundamentals": fundamentals,
                     "real": class_scores(real, label, law),
                     "gaussian_law": class_scores(gaussian_law_clips(real), label, law),
                     "teacher": class_scores(clips, label, law, noise_amplitude)})
    return {"teacher_file": teacher_file, "n": n, "nfe": nfe, "harmonics": law.harmonics, "gain": law.gain,
            "classes": rows}


def cell(scores: dict, key: str) -> str:
    return f"{scores[key]:.3f}" if key in scores else ""


def markdown(results: dict) -> str:
    lines = [f"Teacher {results['teacher_file']}; {results['n']} clips a class, ODE at NFE {results['nfe']}; "
             f"harmonics {results['harmonics']}, gain {results['gain']}.", "",
             "| class | fundamentals | law | pitch accuracy | strongest bin a fundamental | partial spread | "
             "gain distance | noise correlation |", "|---|---|---|---|---|---|---|---|"]
    for row in results["classes"]:
        for law in ("real", "gaussian_law", "teacher"):
            s = row[law]
            lines.append(f"| {row['class']} | {row['fundamentals']} | {law.replace('_', ' ')} | "
                         f"{cell(s, 'pitch_accuracy')} | {cell(s, 'strongest_is_fundamental')} | "
                         f"{cell(s, 'partial_spread')} | {cell(s, 'gain_distance')} | "
                         f"{cell(s, 'noise_correlation')} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("teacher", nargs="?", default="embedded:tones_teacher")
    parser.add_argument("--n", type=int, default=128)
    parser.add_argument("--nfe", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = measure(args.teacher, args.n, args.nfe)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "tones_amplitudes.json").write_text(json.dumps(results, indent=2))
    (RESULTS / "tones_amplitudes.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
