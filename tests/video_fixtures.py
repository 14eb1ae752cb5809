"""A tiny causal-capable video teacher the rollout and ODE-regression tests share."""

import torch

from potstill.backbones.video_dit import VideoDiT, VideoDiTOptions
from potstill.core.denoiser import Denoiser
from potstill.core.schedules import FlowSchedule

FRAMES, CHUNK, TIMES = 6, 2, [1.0, 0.6, 0.3]


def tiny_teacher() -> Denoiser:
    torch.manual_seed(0)
    backbone = VideoDiT(VideoDiTOptions(input_size=8, patch_size=4, in_channels=1, hidden_size=32, depth=2,
                                        num_heads=2, num_classes=3))
    for p in backbone.parameters():      # adaLN-Zero starts at the identity; give every weight a value
        torch.nn.init.normal_(p, std=0.1)
    return Denoiser(backbone, FlowSchedule(), "flow", 0.5, (1, FRAMES, 8, 8), 3).double()
