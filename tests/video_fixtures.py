"""A tiny causal-capable video teacher the rollout and ODE-regression tests share, and a tiny teacher file made by
`potstill train-teacher` for the tests that run the video configs."""

from pathlib import Path

import torch

from potstill.backbones.video_dit import VideoDiT, VideoDiTOptions
from potstill.cli import main
from potstill.core.denoiser import Denoiser
from potstill.core.schedules import FlowSchedule
from tests_support import CONFIGS

FRAMES, CHUNK, TIMES = 6, 2, [1.0, 0.6, 0.3]
VIDEO = CONFIGS / "video"
TINY_BACKBONE = ["backbone.hidden_size=32", "backbone.depth=2", "backbone.num_heads=2"]


def train_tiny_teacher(folder: Path, extra=()) -> Path:
    """A 2-step moving-digits teacher of 4-frame clips from the shipped teacher config; its file's path."""
    main(["train-teacher", str(VIDEO / "moving_digits_teacher.yaml"), "--out", str(folder), "--set", *TINY_BACKBONE,
          "real_data.frames=4", "train.steps=2", "train.batch_size=4", "train.progress=false", *extra])
    return folder / "teacher.safetensors"


def tiny_teacher() -> Denoiser:
    torch.manual_seed(0)
    backbone = VideoDiT(VideoDiTOptions(input_size=8, patch_size=4, in_channels=1, hidden_size=32, depth=2,
                                        num_heads=2, num_classes=3))
    for p in backbone.parameters():      # adaLN-Zero starts at the identity; give every weight a value
        torch.nn.init.normal_(p, std=0.1)
    return Denoiser(backbone, FlowSchedule(), "flow", 0.5, (1, FRAMES, 8, 8), 3).double()
