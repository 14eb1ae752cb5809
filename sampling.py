"""`potstill sample`: draw from a run's EMA student, optionally with a fixed class, another clip length, or
streamed chunk by chunk with each chunk's latency printed; written as a tensor or the modality's picture."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from potstill.core.config import read_yaml
from potstill.core.modality import FOLDER
from potstill.core.tensors import to_device
from potstill.runs import find_run, open_run

FOLDER_NAME = "a folder (DIR/)"


@dataclass
class SampleRequest:
    run: str
    n: int
    out: Path
    seed: int = 0
    batch: int = 1000
    device: str = "auto"
    label: int | None = None
    frames: int | None = None
    stream: bool = False
    steps: int | None = None


def frame_overrides(run: str, frames: int | None) -> list[str]:
    """`modality.frames=F` for a run whose modality takes a clip length; an error for any other."""
    if frames is None:
        return []
    run_dir, _ = find_run(run)
    modality = read_yaml(run_dir / "config.yaml").get("modality", {})
    if not isinstance(modality, dict) or "frames" not in modality:
        kind = modality.get("kind") if isinstance(modality, dict) else modality
        raise ValueError(f"--frames: this run's modality ({kind}) has no frames")
    return [f"modality.frames={frames}"]


def fix_label(cond, label: int | None, num_classes: int):
    """Every condition set to class `label` (class-conditional runs only)."""
    if label is None:
        return cond
    if not isinstance(cond, torch.Tensor) or cond.is_floating_point():
        raise ValueError("--class: this run's samples are not class-conditional")
    if not 0 <= label < num_classes:
        raise ValueError(f"--class: {label} is not a class of this run (0..{num_classes - 1})")
    return torch.full_like(cond, label)


def streamed(generator, noise: torch.Tensor, cond, report: bool) -> torch.Tensor:
    """The student's chunks as they are finished; with `report`, one line per chunk with its latency."""
    if not hasattr(generator, "stream"):
        raise ValueError(f"--stream: this run's student ({type(generator).__name__}) does not generate chunk by chunk")
    chunks, frame = [], 0
    for chunk, seconds in generator.stream(noise, cond):
        frames = chunk.shape[2]
        if report:
            print(f"chunk {len(chunks) + 1}: frames {frame + 1}-{frame + frames} in {1000 * seconds:.1f} ms "
                  f"({noise.shape[0]} clips)", flush=True)
        chunks.append(chunk)
        frame += frames
    return torch.cat(chunks, dim=2)


@torch.no_grad()
def sample_run(request: SampleRequest) -> Path:
    distiller = open_run(request.run, request.device, frame_overrides(request.run, request.frames))
    out = request.out
    formats = tuple(dict.fromkeys((".pt", *distiller.modality.sample_formats)))
    if (out.suffix or FOLDER) not in formats:
        named = [FOLDER_NAME if f == FOLDER else f for f in formats]
        raise ValueError(f"--out {out}: this run's samples can be written as {', '.join(named)}")
    generator = torch.Generator().manual_seed(request.seed)
    student = distiller.ema.model
    if request.steps is not None:
        if not hasattr(student, "use_steps"):
            raise ValueError(f"--steps: this run's student ({type(student).__name__}) has no step count to change")
        student.use_steps(request.steps)
    parts, conds = [], []
    for start in range(0, request.n, request.batch):
        noise, cond = distiller.draw_inputs(min(request.batch, request.n - start), generator)
        cond = fix_label(cond, request.label, getattr(distiller.modality, "num_classes", 0))
        x = streamed(student, noise, cond, report=start == 0) if request.stream else student.sample(noise, cond)
        parts.append(x.float().cpu())
        conds.append(to_device(cond, "cpu"))
    samples = torch.cat(parts)
    if not torch.isfinite(samples).all():
        raise ValueError(f"--out {out}: the student's samples hold NaN or Inf; nothing was written")
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".pt":
        samples = distiller.modality.to_data_range(samples)
        torch.save(samples, out)
    else:
        out = distiller.modality.save_samples(samples, torch.cat(conds) if conds[0] is not None else None, out)
    print(f"wrote {request.n} samples of shape {tuple(samples.shape[1:])} to {out}")
    return out
