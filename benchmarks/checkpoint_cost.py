"""What a verified checkpoint costs: writing the weights and state, sealing them (fsync and a SHA-256
manifest of every file), committing (rename, `latest`), and verifying them on load, for checkpoints of
several sizes. Side by side in one run, so the ratio of sealing to writing is what to read.

    python benchmarks/checkpoint_cost.py [--megabytes 16 256 1024] [--repeats 3]

Writes benchmarks/results/checkpoint_cost.json and .md."""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from potstill.core import checkpoint as ckpt

RESULTS = Path(__file__).resolve().parent / "results"
MODELS = ("generator", "generator_ema", "fake_score")


def weights_of(megabytes: float) -> dict[str, dict[str, torch.Tensor]]:
    """Three models of `megabytes` / 3 each in fp32, in 4 MiB tensors, like a DMD2 checkpoint's files."""
    per_model = int(megabytes * 2**20 / len(MODELS) / 4)
    chunk = 2**20
    return {name: {f"w{i}": torch.randn(min(chunk, per_model - i * chunk)) for i in range(-(-per_model // chunk))}
            for name in MODELS}


def timed(action, *args) -> float:
    start = time.perf_counter()
    action(*args)
    return time.perf_counter() - start


def one_checkpoint(weights: dict, folder: Path) -> dict[str, float]:
    """Seconds for each phase of one checkpoint written into `folder` and read back."""
    staging, final = ckpt.staging_folder(folder, 1), ckpt.final_folder(folder, 1)
    ckpt.clear_folder(staging)
    return {"write": timed(ckpt.write_checkpoint, staging, weights, {"step": 1}),
            "seal": timed(ckpt.write_manifest, staging, 1),
            "commit": timed(ckpt.commit_checkpoint, folder, staging, final),
            "verify": timed(ckpt.verify_checkpoint, final)}


def measure(megabytes: float, repeats: int) -> dict:
    weights = weights_of(megabytes)
    rows = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as folder:
            rows.append(one_checkpoint(weights, Path(folder)))
    best = {key: min(row[key] for row in rows) for key in rows[0]}
    return {"megabytes": megabytes, **best, "seal_over_write": best["seal"] / best["write"]}


def markdown(results: list[dict], machine: str) -> str:
    lines = ["| checkpoint (MiB) | write (s) | seal: fsync + SHA-256 manifest (s) | commit (s) | verify on load (s) "
             "| seal / write |", "|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['megabytes']:.0f} | {r['write']:.3f} | {r['seal']:.3f} | {r['commit']:.4f} | "
                     f"{r['verify']:.3f} | {r['seal_over_write']:.2f} |")
    return "\n".join(lines) + f"\n\n{machine}; best of the repeats.\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--megabytes", type=float, nargs="+", default=[16, 256, 1024])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    results = [measure(mb, args.repeats) for mb in args.megabytes]
    machine = f"{platform.platform()}, torch {torch.__version__}, {torch.get_num_threads()} threads"
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "checkpoint_cost.json").write_text(json.dumps({"machine": machine, "results": results}, indent=2))
    table = markdown(results, machine)
    (RESULTS / "checkpoint_cost.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
