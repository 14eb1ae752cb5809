"""Per-rank memory and step time of a DMD2 step on a large DiT: 1 process on the plain engine against
DeepSpeed ZeRO-3 with the teacher sharded on 1 and 2 ranks, in fp32 and in bf16 (`train.precision: bf16`)
(teacher, fake score and one-step student the same DiT, as in real distillation). Each setting runs in its own
processes, one after the other. The DeepSpeed runs set `engine.host_mmap_threshold_mib: 1` (freed host blocks
go back to the system, core/host_allocator.py); a setting ending in `:rising` leaves glibc's own threshold, the
engine's default, and one ending in `:torch_linear` turns `engine.memory_efficient_linear` off (torch's F.linear
keeps each gathered weight until backward; core/zero3_linear.py).

    python benchmarks/deepspeed_memory.py [--hidden 768] [--depth 16] [--batch 4] [--steps 3]

Reports per rank: teacher bytes held, bytes of all models held, peak resident memory while building
and while stepping (CPU: VmHWM, reset after set-up; GPU: max allocated), and seconds per step; and, from the
DeepSpeed runs on 1 and 2 ranks, a prediction for 4 and 8 ranks (memory = shared + split / N).
Writes benchmarks/results/deepspeed_memory.json and .md."""

from __future__ import annotations

import argparse
import ctypes
import json
import platform
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from distill_step import write_teacher  # benchmarks/ is on the path when this file runs as a script
from live_tensors import LiveTensorBytes

import potstill  # noqa: F401  (registers components)
from potstill.backbones.dit import DiTOptions
from potstill.core.config import load_config
from potstill.core.distiller import Distiller
from potstill.core.memory_budget import process_memory

RESULTS = Path(__file__).resolve().parent / "results"


def held_bytes() -> int:
    """Resident memory now, after returning freed memory to the OS (GPU: allocated now)."""
    if torch.cuda.is_available():
        return torch.cuda.memory_allocated()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    return process_memory("VmRSS")


def reset_peak() -> None:
    """Return freed set-up memory to the OS, then restart the high-water mark from what is held now."""
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def peak_bytes() -> int:
    return torch.cuda.max_memory_allocated() if torch.cuda.is_available() else process_memory("VmHWM")


def worker(args: argparse.Namespace) -> None:
    engine = ({"kind": "deepspeed", "zero_stage": 3, "config_file": "zero3.json",
               "host_mmap_threshold_mib": None if args.allocator == "rising" else 1,
               "memory_efficient_linear": args.linear == "zero3"}
              if args.engine == "deepspeed" else "plain")
    config = load_config(data={
        "modality": {"kind": "image", "classifier": None},
        "teacher": {"kind": "dit", "checkpoint": args.teacher, "shard": args.engine == "deepspeed"},
        "generator": {"kind": "denoiser", "times": [80.0]},
        "fake_score": "teacher_copy",
        "objective": "dmd2",
        "engine": engine,
        "train": {"batch_size": args.batch, "generator_every": 1, "steps": 10**9, "progress": False,
                  "precision": args.precision},
        "optim": {"generator": {"lr": 1e-5}, "fake_score": {"lr": 1e-5}},
    })
    distiller = Distiller(config)
    e = distiller.engine
    build_peak = peak_bytes()
    reset_peak()
    distiller.train_step()
    e.barrier()
    start = time.perf_counter()
    for _ in range(args.steps):
        distiller.train_step()
    e.barrier()
    seconds = (time.perf_counter() - start) / args.steps
    step_peak = peak_bytes()
    profile = memory_profile(distiller)
    live = live_tensor_profile(distiller)
    models = [distiller.teacher, distiller.generator, distiller.fake_score, distiller.ema.model]
    teacher_held, teacher_total = e.parameter_share(distiller.teacher)
    row = {
        "engine": args.engine, "precision": args.precision, "allocator": args.allocator, "linear": args.linear,
        "ranks": e.world_size,
        "rank": e.rank,
        "teacher_parameters": teacher_total, "teacher_bytes_held": 4 * teacher_held,
        "model_bytes_held": sum(held_parameter_bytes(m) for m in models),
        "build_peak_bytes": build_peak, "steady_bytes": held_bytes(), "step_peak_bytes": step_peak,
        "sec_per_step": seconds, "memory_profile": profile, "live_tensor_profile": live,
    }
    Path(args.out).with_name(f"{Path(args.out).stem}_rank{e.rank}.json").write_text(json.dumps(row))
    e.close()


def each_phase(distiller: Distiller, end_of_phase: Callable[[str], None]) -> None:
    """One training step, calling `end_of_phase(name)` as each phase ends: each update's forwards and backward,
    then its optimizer step (the engine's `step`), in the order they run."""
    engine, original = distiller.engine, distiller.engine.step

    def step(trainable):
        end_of_phase(f"{trainable.name}: forward and backward")
        norms = original(trainable)
        end_of_phase(f"{trainable.name}: optimizer step")
        return norms

    engine.step = step
    distiller.train_step()
    engine.step = original


def memory_profile(distiller: Distiller) -> dict[str, int]:
    """Per phase (`each_phase`), peak memory above what was held when the phase began."""
    phases: dict[str, int] = {}
    start = [0]

    def restart() -> None:
        reset_peak()
        start[0] = held_bytes()

    def end_of_phase(name: str) -> None:
        phases[name] = peak_bytes() - start[0]
        restart()

    restart()
    each_phase(distiller, end_of_phase)
    return phases


def live_tensor_profile(distiller: Distiller) -> dict[str, dict]:
    """Per phase (`each_phase`), the peak bytes of tensors alive that the phase's ops made, and the sites holding
    most of them then (benchmarks/live_tensors.py): what tensors needed, without the allocator's keep."""
    phases: dict[str, dict] = {}
    mode = LiveTensorBytes()
    start = [0]

    def end_of_phase(name: str) -> None:
        phases[name] = {"peak_bytes": mode.peak - start[0], "largest": mode.largest_at_peak()}
        start[0] = mode.now
        mode.restart()

    with mode:
        each_phase(distiller, end_of_phase)
    return phases


def held_parameter_bytes(module: torch.nn.Module) -> int:
    """Bytes of the parameters this rank holds (a ZeRO-3 partition, or the whole tensor), in their own dtype."""
    return sum(getattr(p, "ds_tensor", p).numel() * p.element_size() for p in module.parameters())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_setting(engine: str, ranks: int, precision: str, allocator: str, linear: str, teacher: Path, folder: Path,
                args: argparse.Namespace) -> list[dict]:
    name = f"{engine}_{ranks}_{precision}_{allocator}_{linear}"
    script = [str(Path(__file__).resolve()), "--worker", "--engine", engine, "--teacher", str(teacher),
              "--batch", str(args.batch), "--steps", str(args.steps), "--precision", precision,
              "--allocator", allocator, "--linear", linear,
              "--out", str(folder / f"{name}.json")]
    if engine == "deepspeed":
        command = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", str(ranks), "--master_port",
                   str(free_port()), *script]
    else:
        command = [sys.executable, *script]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{name} run failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    return [json.loads(p.read_text()) for p in sorted(folder.glob(f"{name}_rank*.json"))]


def predicted(rows: list[dict], precision: str, key: str) -> dict[int, float]:
    """`key` per rank at 4 and 8 ranks from the DeepSpeed runs on 1 and 2: shared + split / N through both (a
    prediction: communication buffers that grow with N are not in it)."""
    one = max(r[key] for r in fixed(rows) if r["engine"] == "deepspeed" and r["ranks"] == 1
              and r["precision"] == precision)
    two = max(r[key] for r in fixed(rows) if r["engine"] == "deepspeed" and r["ranks"] == 2
              and r["precision"] == precision)
    split = 2 * (one - two)
    return {n: one - split + split / n for n in (4, 8)}


def fixed(rows: list[dict]) -> list[dict]:
    """The rows run with potstill's fixed host threshold and DeepSpeed's linear function (the defaults)."""
    return [r for r in rows if r["allocator"] == "fixed" and r["linear"] == "zero3"]


def setting_name(r: dict) -> str:
    if r["engine"] == "plain":
        return f"plain, 1 process, {r['precision']}"
    rising = ", glibc's rising threshold" if r["allocator"] == "rising" else ""
    linear = ", torch's F.linear" if r["linear"] == "torch" else ""
    return f"DeepSpeed ZeRO-3, {r['ranks']} rank{'s' if r['ranks'] > 1 else ''}, {r['precision']}{rising}{linear}"


def write_results(rows: list[dict], meta: dict, name: str) -> None:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    gib = 2**30
    plain = next((r for r in rows if r["engine"] == "plain"), None)
    phases = list(rows[0]["memory_profile"])
    lines = [f"DMD2 step, DiT teacher of {rows[0]['teacher_parameters'] / 1e6:.0f}M parameters (fake score and "
             f"student the same size), global batch {meta['batch']}, {meta['device']}.", "",
             "| setting | rank | teacher held (GiB) | all models held (GiB) | peak while building (GiB) | "
             "held between steps (GiB) | peak while stepping (GiB) | s/step |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {setting_name(r)} | {r['rank']} | {r['teacher_bytes_held'] / gib:.3f} | "
                     f"{r['model_bytes_held'] / gib:.3f} | {r['build_peak_bytes'] / gib:.2f} | "
                     f"{r['steady_bytes'] / gib:.2f} | "
                     f"{r['step_peak_bytes'] / gib:.2f} | {r['sec_per_step']:.2f} |")
    lines += ["", "Memory profile of one step: peak above what was held when each phase began (GiB; rank 0):", "",
              "| setting | " + " | ".join(phases) + " |", "|---|" + "---|" * len(phases)]
    for r in rows:
        if r["rank"] == 0:
            lines.append(f"| {setting_name(r)} | "
                         + " | ".join(f"{r['memory_profile'].get(k, 0) / gib:.2f}" for k in phases)
                         + " |")
    lines += ["", "Peak bytes of live tensors made in each phase (GiB; rank 0; benchmarks/live_tensors.py: what the "
              "tensors needed, without what the allocator kept):", "",
              "| setting | " + " | ".join(phases) + " |", "|---|" + "---|" * len(phases)]
    for r in rows:
        if r["rank"] == 0:
            lines.append(f"| {setting_name(r)} | " + " | ".join(
                f"{r['live_tensor_profile'].get(k, {}).get('peak_bytes', 0) / gib:.2f}" for k in phases) + " |")
    lines += summary(rows, plain)
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def summary(rows: list[dict], plain: dict | None) -> list[str]:
    """The 4- and 8-rank prediction and the 2-rank ratios, where the rows have what they need."""
    gib = 2**30
    have = {(r["engine"], r["ranks"], r["precision"]) for r in fixed(rows)}
    lines = []
    precisions = sorted(p for p in ("fp32", "bf16") if {("deepspeed", 1, p), ("deepspeed", 2, p)} <= have)
    if precisions:
        lines += ["", "Predicted per rank at 4 and 8 ranks (GiB; from the 1- and 2-rank DeepSpeed rows as shared + "
                  "split / N):", "", "| precision | quantity | 4 ranks | 8 ranks |", "|---|---|---|---|"]
    for precision in precisions:
        for key, label in (("build_peak_bytes", "peak while building"), ("steady_bytes", "held between steps"),
                           ("step_peak_bytes", "peak while stepping")):
            guess = predicted(rows, precision, key)
            lines.append(f"| {precision} | {label} | {guess[4] / gib:.2f} | {guess[8] / gib:.2f} |")
    ds = [r for r in fixed(rows) if r["engine"] == "deepspeed" and r["ranks"] == 2 and r["precision"] == "fp32"]
    rising = [r for r in rows if r["allocator"] == "rising" and r["ranks"] == 2 and r["precision"] == "fp32"]
    torch_linear = [r for r in rows if r["linear"] == "torch" and r["allocator"] == "fixed" and r["ranks"] == 2
                    and r["precision"] == "fp32"]
    if ds and plain:
        lines += ["", f"Teacher share per rank: {ds[0]['teacher_bytes_held'] / plain['teacher_bytes_held']:.3f} of "
                  f"the whole; held between steps per rank: "
                  f"{max(r['steady_bytes'] for r in ds) / plain['steady_bytes']:.2f} of the single process's; "
                  f"stepping peak: (2 ranks, fp32) "
                  f"{max(r['step_peak_bytes'] for r in ds) / plain['step_peak_bytes']:.2f}; "
                  "step time ratio (2 ranks / 1 process): "
                  f"{max(r['sec_per_step'] for r in ds) / plain['sec_per_step']:.2f}."]
        if rising:
            lines.append(f"With glibc's threshold left to rise, the 2-rank fp32 stepping peak is "
                         f"{max(r['step_peak_bytes'] for r in rising) / plain['step_peak_bytes']:.2f} of the single "
                         f"process's, at {max(r['sec_per_step'] for r in rising):.2f} s/step.")
        if torch_linear:
            lines.append(f"With torch's F.linear (gathered weights kept until backward), the 2-rank fp32 stepping "
                         f"peak is {max(r['step_peak_bytes'] for r in torch_linear) / plain['step_peak_bytes']:.2f} "
                         f"of the single process's, at {max(r['sec_per_step'] for r in torch_linear):.2f} s/step.")
    return [
        *lines,
        "CPU figures are resident set sizes (they include the Python and torch runtime, ~0.5 GiB).",
        "Held models are parameter bytes; ZeRO-3 keeps, per trained model and rank, flat partitions of the "
        "parameters, their fp32 master copy, gradients and the two Adam moments (5 x P/N in an fp32 run).",
        "The stepping peak adds DeepSpeed's transient buffers (gathered layers, flattened gradient and "
        "optimizer temporaries) on top of what is held."]


SETTINGS = ["plain:1:fp32", "deepspeed:1:fp32", "deepspeed:2:fp32", "deepspeed:2:fp32:torch_linear",
            "deepspeed:2:fp32:rising", "deepspeed:1:bf16", "deepspeed:2:bf16"]
FLAGS = {"rising", "torch_linear"}
PRESETS = {"dit-xl-2": {"hidden": 1152, "depth": 28, "heads": 16, "input_size": 32}}   # DiT-XL/2's widths


def parse_setting(text: str) -> tuple[str, int, str, str, str]:
    """(engine, ranks, precision, allocator, linear) of `engine:ranks:precision[:rising][:torch_linear]`."""
    engine, ranks, precision, *flags = text.split(":")
    if not set(flags) <= FLAGS:
        raise SystemExit(f"--settings {text}: expected engine:ranks:precision[:rising][:torch_linear]")
    return (engine, int(ranks), precision, "rising" if "rising" in flags else "fixed",
            "torch" if "torch_linear" in flags else "zero3")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--depth", type=int, default=16)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--input-size", type=int, default=16)
    parser.add_argument("--preset", choices=sorted(PRESETS), help="a public DiT's widths (random weights)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--settings", nargs="+", default=SETTINGS,
                        help="engine:ranks:precision[:rising][:torch_linear], engine plain or deepspeed, precision "
                             "fp32, bf16_autocast, bf16; rising: glibc's own mmap threshold on CPU ranks; "
                             "torch_linear: engine.memory_efficient_linear off")
    parser.add_argument("--name", default="deepspeed_memory", help="results file stem under benchmarks/results/")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--engine", choices=["plain", "deepspeed"], help=argparse.SUPPRESS)
    parser.add_argument("--teacher", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--precision", default="fp32", help=argparse.SUPPRESS)
    parser.add_argument("--allocator", default="fixed", help=argparse.SUPPRESS)
    parser.add_argument("--linear", default="zero3", help=argparse.SUPPRESS)
    parser.add_argument("--local_rank", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    if args.preset:
        vars(args).update(PRESETS[args.preset])
    network = DiTOptions(input_size=args.input_size, patch_size=2, in_channels=4, hidden_size=args.hidden,
                         depth=args.depth, num_heads=args.heads, num_classes=10, learn_sigma=False)
    settings = [parse_setting(s) for s in args.settings]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        teacher = write_teacher(folder, network)
        rows = [row for setting in settings for row in run_setting(*setting, teacher, folder, args)]
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({platform.processor() or 'x86'})"
    write_results(rows, {"batch": args.batch, "steps": args.steps, "device": device, "network": vars(network),
                         "torch": torch.__version__}, args.name)


if __name__ == "__main__":
    main()
