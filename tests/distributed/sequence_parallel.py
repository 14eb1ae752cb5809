"""Run under `deepspeed --num_gpus 2`: a float64 video DiT with each clip's frames split over the 2 ranks
(`engine.sequence_parallel: 2`) against the same model on one rank, bidirectional and block-causal: output,
features, and the gradients of input and parameters (each rank holds its frames' part, summed over the group);
then cached streaming against the one-rank masked forward. Each rank writes the largest differences."""

import json
import sys
from pathlib import Path

import torch

from potstill.backbones.video_dit import VideoDiT, VideoDiTOptions
from potstill.core import sequence_parallel
from potstill.core.causal import CachePolicy
from potstill.core.config import TrainConfig
from potstill.core.deepspeed_engine import DeepSpeedEngine, DeepSpeedOptions

OPTIONS = VideoDiTOptions(input_size=8, patch_size=4, in_channels=1, hidden_size=32, depth=2, num_heads=4,
                          num_classes=3)
FRAMES, CHUNK, WINDOW, SINKS = 8, 2, 4, 1


def model(causal: bool) -> VideoDiT:
    torch.manual_seed(0)
    network = VideoDiT(OPTIONS).double()
    for p in network.parameters():
        torch.nn.init.normal_(p, std=0.1)     # the zero init would hide the attention
    network.causal, network.chunk_frames = causal, CHUNK
    network.window_frames, network.sink_frames = (WINDOW, SINKS) if causal else (None, 0)
    return network


def inputs():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 1, FRAMES, 8, 8, generator=g, dtype=torch.float64)
    return x, 1000 * torch.rand(2, FRAMES, generator=g, dtype=torch.float64), torch.tensor([0, 2])


def forward_and_grads(network: VideoDiT, group) -> dict[str, torch.Tensor]:
    """Output, features and the gradients of one loss on them; a sequence group's parts summed."""
    x, t, y = inputs()
    x.requires_grad_(True)
    out, (features,) = network(x, t, y, features=[0])
    (out.square().sum() + features.sin().sum()).backward()
    grads = {"x": x.grad, **{name: p.grad for name, p in network.named_parameters()}}
    if group is not None:
        for grad in grads.values():
            torch.distributed.all_reduce(grad, group=group.group)
    return {"out": out.detach(), "features": features.detach(), **grads}


def streamed(network: VideoDiT) -> torch.Tensor:
    x, t, y = inputs()
    cache = network.new_cache(2, CachePolicy(window_frames=WINDOW, sink_frames=SINKS, mode="rolling"))
    with torch.no_grad():
        return torch.cat([network(x[:, :, s:s + CHUNK], t[:, s:s + CHUNK], y, cache=cache, write=True)
                          for s in range(0, FRAMES, CHUNK)], dim=2)


def largest_difference(a: dict, b: dict) -> dict[str, float]:
    return {key: (a[key] - b[key]).abs().max().item() / max(b[key].abs().max().item(), 1e-30) for key in b}


def main(out: Path) -> None:
    engine = DeepSpeedEngine(DeepSpeedOptions(sequence_parallel=2), TrainConfig(batch_size=2))
    group = sequence_parallel.GROUP
    report = {"rank": engine.rank, "group_size": group.size, "data_parallel_ranks": engine.world_size // group.size}
    for causal in (False, True):
        sequence_parallel.set_sequence_group(None)
        one = forward_and_grads(model(causal), None)
        sequence_parallel.set_sequence_group(group)
        split = forward_and_grads(model(causal), group)
        report["causal" if causal else "bidirectional"] = largest_difference(split, one)
    sequence_parallel.set_sequence_group(None)
    x, t, y = inputs()
    with torch.no_grad():
        masked = model(True)(x, t, y)
    sequence_parallel.set_sequence_group(group)
    report["streaming"] = largest_difference({"out": streamed(model(True))}, {"out": masked})
    (out / f"rank{engine.rank}.json").write_text(json.dumps(report))
    engine.close()


if __name__ == "__main__":
    main(Path(next(a for a in sys.argv[1:] if not a.startswith("--local_rank"))))
