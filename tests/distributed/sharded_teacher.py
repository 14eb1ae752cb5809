"""Run under `deepspeed --num_gpus 2`: the embedded digits teacher, whole on every rank and partitioned
with ZeRO-3, must give the same x0 and the same input gradient; each rank writes what it holds."""

import json
import sys
from pathlib import Path

import torch

from potstill.core.config import TrainConfig
from potstill.core.deepspeed_engine import DeepSpeedEngine, DeepSpeedOptions
from potstill.modalities.image import DiTTeacherOptions, build_dit_denoiser


def main(out: Path) -> None:
    engine = DeepSpeedEngine(DeepSpeedOptions(zero_stage=3), TrainConfig(batch_size=8))
    whole = build_dit_denoiser(DiTTeacherOptions()).requires_grad_(False).eval()
    sharded = engine.prepare_frozen("teacher", build_dit_denoiser(DiTTeacherOptions()).requires_grad_(False).eval(),
                                    shard=True)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(8, *whole.sample_shape, generator=generator)
    t = torch.full((8,), 2.0)
    cond = torch.arange(8) % 10
    results = {}
    for name, model in (("whole", whole), ("sharded", sharded)):
        x_in = x.clone().requires_grad_(True)
        x0 = model.x0(x_in, t, cond)
        (grad,) = torch.autograd.grad(x0.square().sum(), x_in)
        results[name] = (x0.detach(), grad)
    local, total = engine.parameter_share(sharded)
    report = {
        "rank": engine.rank,
        "world_size": engine.world_size,
        "held": local,
        "total": total,
        "whole_held": engine.parameter_share(whole)[0],
        "x0_max_difference": (results["whole"][0] - results["sharded"][0]).abs().max().item(),
        "x0_scale": results["whole"][0].abs().max().item(),
        "grad_max_difference": (results["whole"][1] - results["sharded"][1]).abs().max().item(),
        "grad_scale": results["whole"][1].abs().max().item(),
    }
    (out / f"rank{engine.rank}.json").write_text(json.dumps(report))
    engine.close()


if __name__ == "__main__":
    main(Path(next(a for a in sys.argv[1:] if not a.startswith("--local_rank"))))
