"""Run under `deepspeed --num_gpus 2` with two DiT teacher files, a tiny one and the one checked: the teacher built
under ZeRO-3 one parameter at a time from its file, and the student and whole copies made from it; each rank
writes what it saw and how much its resident memory grew while building (after building the tiny teacher the same
way, so that DeepSpeed's one-time start-up costs are not counted); and with a budget of 3/4 of the teacher, the
teacher refused whole on one rank and built split over two; and a Wan transformer saved in shards, streamed into
partitions, against its whole load."""

import json
import sys
from pathlib import Path

import deepspeed
import torch
from safetensors.torch import load_file

from potstill.core.config import TrainConfig
from potstill.core.deepspeed_engine import DeepSpeedEngine, DeepSpeedOptions
from potstill.core.memory_budget import process_memory
from potstill.core.pretrained import load_pretrained, load_pretrained_partitioned
from potstill.core.zero_build import is_partitioned
from potstill.modalities.image import DiTTeacherOptions, build_dit_denoiser


def wan_streamed(folder: Path, engine: DeepSpeedEngine) -> dict:
    """A sharded Wan transformer folder built split across ranks against the whole load: every parameter
    partitioned and equal when gathered, and the RoPE buffers Wan computes as it is made equal."""
    import diffusers

    model_class = diffusers.WanTransformer3DModel
    whole = load_pretrained(model_class, folder, None, "teacher.path")
    split = load_pretrained_partitioned(model_class, folder, None, "teacher.path",
                                        engine.partition_for(True, torch.float32), torch.float32, None)
    differ = []
    for (name, parameter), reference in zip(split.named_parameters(), whole.parameters(), strict=True):
        with deepspeed.zero.GatheredParameters([parameter]):
            if not torch.equal(parameter.data, reference):
                differ.append(name)
    return {"wan_partitioned": all(is_partitioned(p) for p in split.parameters()), "wan_differ": differ,
            "wan_buffers_equal": all(torch.equal(a, b) for a, b in zip(split.buffers(), whole.buffers(), strict=True))}


def main(warm_up: Path, path: Path, out: Path, wan: Path) -> None:
    engine = DeepSpeedEngine(DeepSpeedOptions(zero_stage=3), TrainConfig(batch_size=8))
    split = engine.partition_for(True, torch.float32)
    build_dit_denoiser(DiTTeacherOptions(checkpoint=str(warm_up)), split, torch.float32)
    Path("/proc/self/clear_refs").write_text("5")
    before = process_memory("VmRSS")
    teacher = build_dit_denoiser(DiTTeacherOptions(checkpoint=str(path)), split,
                                 torch.float32)
    build_growth = process_memory("VmHWM") - before
    whole_bytes = path.stat().st_size
    try:
        build_dit_denoiser(DiTTeacherOptions(checkpoint=str(path)), None, torch.float32, budget=3 * whole_bytes // 4)
        refused_whole = ""
    except MemoryError as error:
        refused_whole = str(error)
    build_dit_denoiser(DiTTeacherOptions(checkpoint=str(path)), split, torch.float32,
                       budget=3 * whole_bytes // 4)
    student = engine.trained_copy(teacher.backbone)
    whole = engine.copy_model(teacher.backbone)
    stored = load_file(path)
    mismatched, copies_differ = [], []
    for (name, parameter), copied in zip(teacher.backbone.named_parameters(), student.parameters(), strict=True):
        if not torch.equal(parameter.ds_tensor, copied.ds_tensor):
            copies_differ.append(name)
        with deepspeed.zero.GatheredParameters([parameter]):
            if not torch.equal(parameter.data, stored[name]):
                mismatched.append(name)
    report = {
        "rank": engine.rank,
        "teacher_partitioned": all(is_partitioned(p) for p in teacher.backbone.parameters()),
        "student_partitioned": all(is_partitioned(p) for p in student.parameters()),
        "student_trains": all(p.requires_grad for p in student.parameters()),
        "whole_copy_whole": not any(is_partitioned(p) for p in whole.parameters()),
        "whole_copy_equal": all(torch.equal(t, stored[k]) for k, t in whole.state_dict().items()),
        "teacher_held": sum(p.ds_tensor.numel() for p in teacher.backbone.parameters()),
        "teacher_total": sum(t.numel() for t in stored.values()),
        "largest_tensor_bytes": max(t.numel() * t.element_size() for t in stored.values()),
        "mismatched": mismatched,
        "copies_differ": copies_differ,
        "build_growth_bytes": build_growth,
        "refused_whole": refused_whole,
        **wan_streamed(wan, engine),
    }
    (out / f"rank{engine.rank}.json").write_text(json.dumps(report))
    engine.close()


if __name__ == "__main__":
    paths = [a for a in sys.argv[1:] if not a.startswith("--local_rank")]
    main(*map(Path, paths))
