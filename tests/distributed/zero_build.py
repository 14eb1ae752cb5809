"""Run under `deepspeed --num_gpus 2` with two DiT teacher files, a tiny one and the one checked: the teacher built
under ZeRO-3 one parameter at a time from its file, and the student and whole copies made from it; each rank
writes what it saw and how much its resident memory grew while building (after building the tiny teacher the same
way, so that DeepSpeed's one-time start-up costs are not counted); and with a budget of 3/4 of the teacher, the
teacher refused whole on one rank and built split over two; a Wan transformer saved in shards, streamed into
partitions, against its whole load; and the elements the finite check reads, with the partitions' padding NaN."""

import json
import sys
from pathlib import Path

import deepspeed
import torch
from safetensors.torch import load_file

from potstill.core.config import TrainConfig
from potstill.core.deepspeed_engine import DeepSpeedEngine, DeepSpeedOptions
from potstill.core.engine import first_nonfinite
from potstill.core.memory_budget import process_memory
from potstill.core.pretrained import load_pretrained, load_pretrained_partitioned
from potstill.core.zero_build import held_elements, is_partitioned
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


def finite_check(engine: DeepSpeedEngine) -> dict:
    """What the finite check reads of a partitioned head whose odd-sized tensors leave padding in the last
    partition: the elements each rank holds, none of that padding (DeepSpeed leaves it uninitialised; set to NaN
    here), and a NaN in a held element is found."""
    with engine.partition_for(True, torch.float32):
        head = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 1))
    with torch.no_grad():
        padded = 0
        for parameter in head.parameters():
            padding = parameter.ds_tensor[held_elements(parameter).numel():]
            padded += padding.numel()
            padding.fill_(float("nan"))
        held = engine.local_parameters(head)
        padding_flagged = first_nonfinite(held)
        name, tensor = next((n, t) for n, t in held if t.numel())
        tensor[0] = float("nan")
        held_nan_found = first_nonfinite(engine.local_parameters(head)) == name
    return {"head_held": sum(t.numel() for _, t in held), "head_total": sum(p.ds_numel for p in head.parameters()),
            "head_padded": padded, "padding_flagged": padding_flagged, "held_nan_found": held_nan_found}


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
        **finite_check(engine),
    }
    (out / f"rank{engine.rank}.json").write_text(json.dumps(report))
    engine.close()


if __name__ == "__main__":
    paths = [a for a in sys.argv[1:] if not a.startswith("--local_rank")]
    main(*map(Path, paths))
