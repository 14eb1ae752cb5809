"""The audio issue's check, scored independently of potstill: wav files written by `potstill sample RUN --class C
--n 64 --out DIR/classC/` for every class, read with soundfile and scored with numpy's rFFT over the whole clip:
pitch (the class's m fundamentals are the clip's m strongest bins) and purity (energy on the class's partial
bins, k f for k = 1..harmonics, over all energy).

    python benchmarks/tones_wav_check.py DIR --classes '[[12], [18], [12, 15, 18]]' [--harmonics 3] [--name NAME]

Writes benchmarks/results/tones_wav_check_NAME.json and .md (NAME: DIR's folder name by default)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import soundfile

RESULTS = Path(__file__).resolve().parent / "results"


def score_clip(path: Path, fundamentals: list[int], harmonics: int) -> tuple[bool, float, int, int]:
    """(pitch correct, purity, rate, length) of one wav file."""
    clip, rate = soundfile.read(path, always_2d=True)
    power = (np.abs(np.fft.rfft(clip, axis=0)) ** 2).sum(1)
    strongest = sorted(np.argsort(power)[-len(fundamentals):].tolist())
    partial_bins = sorted({k * f for f in fundamentals for k in range(1, harmonics + 1)})
    return strongest == sorted(fundamentals), float(power[partial_bins].sum() / power.sum()), rate, len(clip)


def score_folders(root: Path, classes: list[list[int]], harmonics: int) -> dict:
    rows = []
    for label, fundamentals in enumerate(classes):
        files = sorted((root / f"class{label}").glob("*.wav"))
        if not files:
            raise SystemExit(f"{root / f'class{label}'}: no wav files; write them with potstill sample --class "
                             f"{label} --out {root / f'class{label}'}/")
        scored = [score_clip(path, fundamentals, harmonics) for path in files]
        rows.append({"class": label, "fundamentals": fundamentals, "clips": len(files),
                     "pitch_accuracy": float(np.mean([s[0] for s in scored])),
                     "purity": float(np.mean([s[1] for s in scored])), "rate": scored[0][2], "length": scored[0][3]})
    clips = sum(r["clips"] for r in rows)
    return {"folder": str(root), "harmonics": harmonics, "classes": rows,
            "pitch_accuracy": sum(r["pitch_accuracy"] * r["clips"] for r in rows) / clips,
            "purity": sum(r["purity"] * r["clips"] for r in rows) / clips}


def markdown(results: dict) -> str:
    lines = [f"Clips under {results['folder']}, partials k f for k = 1..{results['harmonics']}.", "",
             "| class | fundamentals | clips | rate | length | pitch accuracy | purity |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['class']} | {r['fundamentals']} | {r['clips']} | {r['rate']} | {r['length']} | "
              f"{r['pitch_accuracy']:.3f} | {r['purity']:.3f} |" for r in results["classes"]]
    lines.append(f"| all | | | | | {results['pitch_accuracy']:.3f} | {results['purity']:.3f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--classes", required=True, help="the tone classes as JSON, as real_data.classes took them")
    parser.add_argument("--harmonics", type=int, default=3)
    parser.add_argument("--name")
    args = parser.parse_args()
    results = score_folders(args.folder, json.loads(args.classes), args.harmonics)
    name = args.name or args.folder.name
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"tones_wav_check_{name}.json").write_text(json.dumps(results, indent=2))
    (RESULTS / f"tones_wav_check_{name}.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
