"""Time and memory of a DMD2 step (one fake-score update + one generator update) on a Stable-Diffusion-like
diffusers teacher, the student and fake score as full teacher copies against LoRA adapters on the teacher's own
weights, interleaved in one process so machine noise hits both alike; peak memory of each in its own child process.
The teacher is a UNet2DConditionModel with random weights saved with `save_pretrained` (nothing downloads), its
text encoder a small random CLIP (tests/diffusers_fixtures.py): `--size tiny` or `small` (CPU), or `--size sd15`,
SD-1.5's UNet config (860M parameters, 4x64x64 latents, 768-wide tokens; for a GPU machine). Memory is the peak
(GPU allocations) and what the run holds after its steps (GPU allocations, or the growth of the process's
resident memory over what the imports hold).

    python benchmarks/real_teacher.py [--size tiny|small|sd15] [--steps 5] [--rounds 3] [--batch 8] [--rank 16]

Writes benchmarks/results/real_teacher_SIZE.json and .md.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import potstill  # noqa: F401  (registers components)
from potstill.core.config import load_config
from potstill.core.distiller import Distiller
from potstill.core.memory_budget import process_memory

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from diffusers_fixtures import clip_text_model, clip_tokenizer

RESULTS = Path(__file__).resolve().parent / "results"
UNETS = {
    "tiny": {"sample_size": 16, "in_channels": 4, "out_channels": 4, "block_out_channels": (32, 64),
             "layers_per_block": 1, "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
             "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"), "cross_attention_dim": 32,
             "attention_head_dim": 8, "norm_num_groups": 16},
    "small": {"sample_size": 32, "in_channels": 4, "out_channels": 4, "block_out_channels": (128, 256),
              "layers_per_block": 2, "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
              "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), "cross_attention_dim": 128,
              "attention_head_dim": 16, "norm_num_groups": 32},
    "sd15": {"sample_size": 64, "in_channels": 4, "out_channels": 4, "block_out_channels": (320, 640, 1280, 1280),
             "layers_per_block": 2, "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
             "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, "cross_attention_dim": 768,
             "attention_head_dim": 8, "norm_num_groups": 32},
}
PROMPTS = ["a photo of a cat", "a red car", "a mountain lake", "a bowl of fruit"]


def write_teacher(folder: Path, size: str) -> Path:
    """A pipeline-style folder: unet/, scheduler/, text_encoder/, tokenizer/ (random weights)."""
    from diffusers import DDPMScheduler, UNet2DConditionModel

    torch.manual_seed(0)
    UNet2DConditionModel(**UNETS[size]).save_pretrained(folder / "unet")
    DDPMScheduler(beta_schedule="scaled_linear", prediction_type="epsilon").save_pretrained(folder / "scheduler")
    clip_text_model(UNETS[size]["cross_attention_dim"]).save_pretrained(folder / "text_encoder")
    clip_tokenizer(folder / "tokenizer")
    return folder


def build_distiller(folder: Path, arm: str, batch: int, rank: int) -> Distiller:
    lora = {"rank": rank, "alpha": float(rank), "target_modules": ["to_q", "to_k", "to_v", "to_out.0"]}
    config = load_config(data={
        "modality": {"kind": "image", "classifier": None, "prompts": PROMPTS},
        "teacher": {"kind": "diffusers", "path": str(folder)},
        "generator": {"kind": "denoiser", "times": [1.0], **({"lora": lora} if arm == "lora" else {})},
        "fake_score": {"kind": "teacher_copy", **({"lora": lora} if arm == "lora" else {})},
        "objective": "dmd2",
        "train": {"batch_size": batch, "generator_every": 1, "steps": 10**9, "progress": False},
        "optim": {"generator": {"lr": 1e-5}, "fake_score": {"lr": 1e-5}},
    })
    return Distiller(config)


def timed(step, n: int) -> float:
    synchronize()
    start = time.perf_counter()
    for _ in range(n):
        step()
    synchronize()
    return (time.perf_counter() - start) / n


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def trained_parameters(distiller: Distiller) -> int:
    return sum(p.numel() for m in (distiller.generator, distiller.fake_score) for p in m.parameters()
               if p.requires_grad)


def memory_child(folder: Path, arm: str, steps: int, batch: int, rank: int) -> None:
    """Memory the run holds after building it and taking `steps` steps (weights, gradients, optimizer state): GPU
    allocations (and their peak), or the growth of the process's resident memory over what the imports hold."""
    baseline = 0.0 if torch.cuda.is_available() else process_memory("VmRSS") / 2**20
    distiller = build_distiller(folder, arm, batch, rank)
    for _ in range(steps):
        distiller.train_step()
    synchronize()
    if torch.cuda.is_available():
        held, peak = torch.cuda.memory_allocated() / 2**20, torch.cuda.max_memory_allocated() / 2**20
    else:
        held, peak = process_memory("VmRSS") / 2**20, None
    print(json.dumps({"held_mb": held - baseline, "peak_mb": peak}))


def peak_memory(folder: Path, arm: str, steps: int, batch: int, rank: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--memory-arm", arm, "--folder", str(folder), "--steps",
                          str(steps), "--batch", str(batch), "--rank", str(rank)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(UNETS), default="tiny")
    parser.add_argument("--steps", type=int, default=5, help="steps per timed block")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved blocks per arm")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rank", type=int, default=16, help="LoRA rank of the student and the fake score")
    parser.add_argument("--memory-arm", choices=["full", "lora"], help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_arm:
        memory_child(args.folder, args.memory_arm, args.steps, args.batch, args.rank)
        return
    with tempfile.TemporaryDirectory() as temp:
        folder = write_teacher(Path(temp), args.size)
        runs = {arm: build_distiller(folder, arm, args.batch, args.rank) for arm in ("full", "lora")}
        for run in runs.values():
            timed(run.train_step, 1)
        times = {arm: [] for arm in runs}
        for _ in range(args.rounds):
            for arm, run in runs.items():
                times[arm].append(timed(run.train_step, args.steps))
        trained = {arm: trained_parameters(run) for arm, run in runs.items()}
        teacher = sum(p.numel() for p in runs["full"].teacher.parameters())
        del runs
        memory = {arm: peak_memory(folder, arm, 2, args.batch, args.rank) for arm in ("full", "lora")}
    median = {arm: statistics.median(v) for arm, v in times.items()}
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or platform.machine()
    unet = {k: list(v) if isinstance(v, tuple) else v for k, v in UNETS[args.size].items()}
    result = {"size": args.size, "unet": unet,
              "teacher_parameters": teacher, "batch": args.batch, "lora_rank": args.rank, "steps_per_block": args.steps,
              "rounds": args.rounds, "device": device, "threads": torch.get_num_threads(), "sec_per_step": times,
              "median_sec_per_step": median, "trained_parameters": trained, "memory": memory,
              "ratio_lora_over_full": {"time": median["lora"] / median["full"],
                                       "memory": memory["lora"]["held_mb"] / memory["full"]["held_mb"]}}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"real_teacher_{args.size}.json").write_text(json.dumps(result, indent=2))
    memory_kind = "GPU memory held" if torch.cuda.is_available() else "resident memory held"
    table = [
        f"| arm | median s/step | {memory_kind} (MB) | trained parameters |", "|---|---|---|---|",
        *(f"| {arm} | {median[arm]:.3f} | {memory[arm]['held_mb']:.0f} | {trained[arm]:,} |" for arm in median),
        "", f"LoRA / full: time **{result['ratio_lora_over_full']['time']:.2f}**, memory "
            f"**{result['ratio_lora_over_full']['memory']:.2f}** (UNet2DConditionModel `{args.size}`, "
            f"{teacher:,} parameters, batch {args.batch}, rank {args.rank}, {device}, {args.rounds} interleaved "
            f"blocks of {args.steps} steps)",
    ]
    (RESULTS / f"real_teacher_{args.size}.md").write_text("\n".join(table) + "\n")
    print("\n".join(table))


if __name__ == "__main__":
    main()
