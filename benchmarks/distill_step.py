"""Time per DMD2 step (one fake-score update + one generator update) of potstill's Distiller against a
minimal hand-written loop of the same mathematics on the same networks, interleaved in one process so
machine noise hits both alike; peak memory of each measured in its own child process.

    python benchmarks/distill_step.py [--steps 20] [--rounds 5] [--batch 32]

Writes benchmarks/results/distill_step.json and .md.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

import potstill  # noqa: F401  (registers components)
from potstill.backbones.dit import DiT, DiTOptions
from potstill.core.config import load_config
from potstill.core.distiller import Distiller
from potstill.core.tensors import per_sample, sample_mean

RESULTS = Path(__file__).resolve().parent / "results"
NETWORK = DiTOptions(input_size=16, patch_size=2, in_channels=4, hidden_size=192, depth=6, num_heads=6,
                     num_classes=10, learn_sigma=False)


def write_teacher(folder: Path, network: DiTOptions = NETWORK) -> Path:
    """A randomly initialised DiT teacher file with potstill's metadata, for timing and memory runs."""
    torch.manual_seed(0)
    model = DiT(network)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.02)
    meta = {"dit": asdict(network), "schedule": "edm", "prediction": "edm", "sigma_data": 0.5}
    path = folder / "teacher.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path, metadata={"potstill": json.dumps(meta)})
    return path


def build_distiller(teacher_path: Path, batch: int) -> Distiller:
    config = load_config(data={
        "modality": {"kind": "image", "classifier": None},
        "teacher": {"kind": "dit", "checkpoint": str(teacher_path)},
        "generator": {"kind": "denoiser", "times": [80.0]},
        "fake_score": "teacher_copy",
        "objective": "dmd2",
        "train": {"batch_size": batch, "generator_every": 1, "steps": 10**9, "progress": False},
        "optim": {"generator": {"lr": 1e-5}, "fake_score": {"lr": 1e-5}},
    })
    return Distiller(config)


class HandWrittenDMD2:
    """DMD2 written out directly (reference §1) on copies of the Distiller's networks and optimizers."""

    def __init__(self, distiller: Distiller) -> None:
        self.teacher = distiller.teacher
        self.generator = copy.deepcopy(distiller.generator)
        self.fake = copy.deepcopy(distiller.fake_score)
        self.ema = copy.deepcopy(distiller.ema.model)
        self.batch = distiller.config.train.batch_size
        self.shape = distiller.modality.sample_shape
        o = distiller.config.optim
        self.g_opt = torch.optim.AdamW(self.generator.parameters(), lr=o.generator.lr, betas=tuple(o.generator.betas))
        self.f_opt = torch.optim.AdamW(self.fake.parameters(), lr=o.fake_score.lr, betas=tuple(o.fake_score.betas))
        self.schedule = self.teacher.schedule

    def _generate(self):
        z = torch.randn(self.batch, *self.shape)
        y = torch.randint(10, (self.batch,))
        return self.generator(z, y), y

    def step(self) -> None:
        with torch.no_grad():
            x, y = self._generate()
        sigma = torch.exp(-1.2 + 1.2 * torch.randn(self.batch))
        x_t = x + per_sample(sigma, x) * torch.randn_like(x)
        weight = (sigma**2 + 0.25) / (sigma * 0.5) ** 2
        fake_loss = (weight * sample_mean((self.fake.x0(x_t, sigma, y) - x) ** 2)).mean()
        fake_loss.backward()
        torch.nn.utils.clip_grad_norm_(self.fake.parameters(), 10.0)
        self.f_opt.step()
        self.f_opt.zero_grad(set_to_none=True)

        self.fake.requires_grad_(False)
        x, y = self._generate()
        with torch.no_grad():
            t = self.schedule.sample_t(self.batch, 0.02, 0.98, 1000)
            x_t = x + per_sample(t, x) * torch.randn_like(x)
            d_real, d_fake = self.teacher.x0(x_t, t, y), self.fake.x0(x_t, t, y)
            grad = torch.nan_to_num((d_fake - d_real) / per_sample(sample_mean((x - d_real).abs()), x))
        loss = 0.5 * F.mse_loss(x, (x - grad).detach())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.generator.parameters(), 10.0)
        self.g_opt.step()
        self.g_opt.zero_grad(set_to_none=True)
        self.fake.requires_grad_(True)
        with torch.no_grad():
            for e, p in zip(self.ema.parameters(), self.generator.parameters(), strict=True):
                e.lerp_(p, 0.001)


def timed(step, n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        step()
    return (time.perf_counter() - start) / n


def memory_child(arm: str, steps: int, batch: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        distiller = build_distiller(write_teacher(Path(folder)), batch)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        step = distiller.train_step if arm == "potstill" else HandWrittenDMD2(distiller).step
        for _ in range(steps):
            step()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"peak_rss_mb": peak / 1024, "step_rss_growth_mb": (peak - before) / 1024}))


def peak_memory(arm: str, steps: int, batch: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--memory-arm", arm, "--steps", str(steps),
                          "--batch", str(batch)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=20, help="steps per timed block")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved blocks per arm")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--memory-arm", choices=["potstill", "hand"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(2)
    if args.memory_arm:
        memory_child(args.memory_arm, args.steps, args.batch)
        return
    with tempfile.TemporaryDirectory() as folder:
        distiller = build_distiller(write_teacher(Path(folder)), args.batch)
        hand = HandWrittenDMD2(distiller)
        timed(distiller.train_step, 3)
        timed(hand.step, 3)
        times = {"potstill": [], "hand": []}
        for _ in range(args.rounds):
            times["potstill"].append(timed(distiller.train_step, args.steps))
            times["hand"].append(timed(hand.step, args.steps))
    median = {arm: statistics.median(v) for arm, v in times.items()}
    result = {
        "network": asdict(NETWORK), "batch": args.batch, "steps_per_block": args.steps, "rounds": args.rounds,
        "machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
        "sec_per_step": times, "median_sec_per_step": median,
        "ratio_potstill_over_hand": median["potstill"] / median["hand"],
        "memory": {arm: peak_memory(arm, 5, args.batch) for arm in ("potstill", "hand")},
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "distill_step.json").write_text(json.dumps(result, indent=2))
    table = [
        "| arm | median s/step | peak RSS (MB) |", "|---|---|---|",
        *(f"| {arm} | {median[arm]:.4f} | {result['memory'][arm]['peak_rss_mb']:.0f} |" for arm in median),
        "", f"ratio potstill / hand-written: **{result['ratio_potstill_over_hand']:.3f}** "
            f"(DiT {NETWORK.hidden_size}x{NETWORK.depth}, {NETWORK.input_size}x{NETWORK.input_size}x"
            f"{NETWORK.in_channels}, batch {args.batch}, {args.rounds} interleaved blocks of {args.steps} steps)",
    ]
    (RESULTS / "distill_step.md").write_text("\n".join(table) + "\n")
    print("\n".join(table))


if __name__ == "__main__":
    main()
