"""Text-to-3D objectives side by side: step time and peak memory of SDS, VSD and CFD distilling the shipped shapes
teacher into a voxel grid, 4 views a step, rendered at 32x32 and 64x64 (resized to the teacher's 32x32; CFD's
consistent noise stays at 32x32, a noise pixel pooling 2x2 render pixels), with the field's silhouette IoU,
Chamfer distance and F-score against the analytic shape after a fixed budget of steps. Each point runs in a
fresh process, so peak memory is its own (CPU: peak RSS; CUDA: max_memory_allocated). The claim: consistent noise
is cheap, CFD's step at most 1.5x SDS's.

    python benchmarks/text_to_3d.py [--steps 300] [--sizes 32 64] [--shape red_ball] [--device cpu]

Writes benchmarks/results/text_to_3d.json and .md."""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"
CONFIGS = Path(__file__).resolve().parent.parent / "configs" / "text_to_3d"
OBJECTIVES = ("sds", "vsd", "cfd")
RATIO_TARGET = 1.5
WARMUP = 5
MIB = 2**20


def measure(objective: str, size: int, steps: int, shape: str, device: str) -> dict:
    """One point, in this process: the run's median step time after warm-up, its peak memory, its 3-D scores."""
    from potstill.core.config import load_config
    from potstill.core.distiller import Distiller

    overrides = ["train.progress=false", f"train.steps={steps}", "train.sample_every=0", "train.checkpoint_every=0",
                 f"modality.shape={shape}", f"generator.render_size={size}", "generator.resize=true",
                 "engine=plain", f"engine.device={device}"]
    distiller = Distiller(load_config(CONFIGS / f"shapes_{objective}.yaml", overrides))
    cuda = distiller.engine.device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        distiller.train_step()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    peak = (torch.cuda.max_memory_allocated() if cuda
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / MIB
    scores = distiller.modality.generator_metrics(distiller.generator)
    return {"objective": objective, "render_size": size, "steps": steps, "ms_per_step":
            1000 * statistics.median(times[WARMUP:]), "peak_mib": peak, "field_iou": scores["field_iou"],
            "chamfer": scores["chamfer"], "f_score": scores["f_score"]}


def run_point(objective: str, size: int, args) -> dict:
    out = subprocess.run([sys.executable, __file__, "--point", objective, str(size), "--steps", str(args.steps),
                          "--shape", args.shape, "--device", args.device], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def write_results(rows: list[dict], args) -> None:
    ratios = {size: next(r["ms_per_step"] for r in rows if r["objective"] == "cfd" and r["render_size"] == size)
              / next(r["ms_per_step"] for r in rows if r["objective"] == "sds" and r["render_size"] == size)
              for size in args.sizes}
    device = torch.cuda.get_device_name() if args.device == "cuda" else f"{platform.processor() or 'cpu'}, " \
                                                                        f"{torch.get_num_threads()} threads"
    report = {"device": device, "shape": args.shape, "steps": args.steps, "rows": rows,
              "cfd_over_sds": {str(k): v for k, v in ratios.items()}, "target": RATIO_TARGET,
              "meets_target": all(v <= RATIO_TARGET for v in ratios.values())}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "text_to_3d.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [f"Shape `{args.shape}`, {args.steps} steps a run, 4 views a step, on {device}.", "",
             "| objective | render size | ms per step | peak MiB | field IoU | Chamfer | F-score |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['objective']} | {r['render_size']} | {r['ms_per_step']:.1f} | {r['peak_mib']:.0f} | "
              f"{r['field_iou']:.3f} | {r['chamfer']:.4f} | {r['f_score']:.3f} |" for r in rows]
    lines += ["", "CFD's step time over SDS's (target at most 1.5): "
              + ", ".join(f"{size}x{size}: {ratio:.2f}" for size, ratio in ratios.items())]
    (RESULTS / "text_to_3d.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--shape", default="red_ball")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--point", nargs=2, metavar=("OBJECTIVE", "SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.point:
        print(json.dumps(measure(args.point[0], int(args.point[1]), args.steps, args.shape, args.device)))
        return
    rows = [run_point(objective, size, args) for size in args.sizes for objective in OBJECTIVES]
    write_results(rows, args)


if __name__ == "__main__":
    main()
