"""Teacher ODE pairs, made once and reused: the teacher's deterministic sampler run from stored noise, keeping
per sample the states at exactly the student's step times and the clean endpoint (CausVid's ODE
initialisation and DMD's regression pairs, reference §1 and §9). A file records the teacher's hash, the kept
times and the solver, so pairs from another teacher or for other step times are refused, never reused."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from potstill.core import parallel
from potstill.core.denoiser import Denoiser
from potstill.core.samplers import Solver, solve, steps_for_nfe


@dataclass
class PairSettings:
    """What a set of pairs is made from: `count` inputs drawn with `seed`, the teacher's `solver` at `nfe`
    evaluations (its grid with the kept `times` inserted) and CFG `guidance`."""

    count: int
    times: list[float]
    nfe: int
    solver: Solver
    guidance: float
    seed: int


def teacher_hash(teacher: Denoiser) -> str:
    """SHA-256 over the teacher's tensors (its weights, or a network-free teacher's `identity_tensors`), with
    their names and shapes, and its schedule and prediction."""
    digest = hashlib.sha256(f"{type(teacher.schedule).__name__}:{teacher.prediction}".encode())
    tensors = teacher.identity_tensors() if hasattr(teacher, "identity_tensors") else teacher.state_dict()
    for name, tensor in sorted(tensors.items()):
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def pair_grid(teacher: Denoiser, settings: PairSettings) -> tuple[torch.Tensor, list[float]]:
    """The solver's grid (decreasing, ending at 0) with the kept times inserted, and the kept times as they
    appear on it (float32 values, so membership is exact)."""
    base = teacher.schedule.sampling_times(steps_for_nfe(settings.nfe, settings.solver))
    kept = torch.tensor(settings.times, dtype=torch.float32)
    if (kept <= 0).any() or (kept > base[0]).any():
        raise ValueError(f"objective.times: {settings.times} must lie in (0, {float(base[0])}], the teacher's range")
    grid = torch.unique(torch.cat([base, kept])).flip(0)
    return grid, [float(t) for t in kept]


@torch.no_grad()
def make_pairs(teacher: Denoiser, modality, settings: PairSettings, device: torch.device,
               batch: int = 64) -> dict[str, torch.Tensor]:
    """noise [N, ...], cond [N] (when conditional), states [N, K, ...] at `settings.times`, endpoint [N, ...]."""
    noise, cond = modality.draw_inputs(settings.count, torch.Generator().manual_seed(settings.seed))
    if cond is not None and not isinstance(cond, torch.Tensor):
        raise ValueError("ODE pairs support tensor conditions (labels or embeddings) only")
    grid, kept = pair_grid(teacher, settings)
    states, endpoints = [], []
    for start in range(0, settings.count, batch):
        part = slice(start, start + batch)
        part_cond = cond[part].to(device) if cond is not None else None
        end, at = solve(teacher, noise[part].to(device), grid.to(device), part_cond, settings.solver,
                        settings.guidance, kept)
        endpoints.append(end.cpu())
        states.append(torch.stack(at, dim=1).cpu() if at else end.new_zeros(end.shape[0], 0, *end.shape[1:]).cpu())
    pairs = {"noise": noise, "states": torch.cat(states), "endpoint": torch.cat(endpoints)}
    if cond is not None:
        pairs["cond"] = cond
    return pairs


def describe(settings: PairSettings, teacher_digest: str) -> dict:
    return {"teacher_hash": teacher_digest, "count": settings.count, "times": settings.times, "nfe": settings.nfe,
            "solver": settings.solver, "guidance": settings.guidance, "seed": settings.seed}


def auto_name(settings: PairSettings, teacher_digest: str) -> str:
    """A file name that changes whenever the teacher or the settings do."""
    settings_digest = hashlib.sha256(json.dumps(describe(settings, ""), sort_keys=True).encode()).hexdigest()
    return f"ode_pairs-{teacher_digest[:16]}-{settings_digest[:12]}.safetensors"


def check_saved(path: Path, saved: dict, wanted: dict, key: str) -> None:
    """Refuse a pairs file made from another teacher, for other step times or with other settings."""
    if saved.get("teacher_hash") != wanted["teacher_hash"]:
        theirs = str(saved.get("teacher_hash"))[:16]
        raise ValueError(f"{key}: {path} holds ODE pairs from another teacher (hash {theirs}, "
                         f"this teacher {wanted['teacher_hash'][:16]}); delete it or point {key} elsewhere")
    if saved.get("times") != wanted["times"]:
        raise ValueError(f"{key}: {path} holds teacher states at times {saved.get('times')}, the student steps at "
                         f"{wanted['times']}; delete it or point {key} elsewhere")
    changed = [k for k in wanted if saved.get(k) != wanted[k]]
    if changed:
        details = ", ".join(f"{k} {saved.get(k)!r} vs {wanted[k]!r}" for k in changed)
        raise ValueError(f"{key}: {path} was made with other settings (saved vs wanted: {details}); delete it to "
                         "remake it")


def read_pairs_metadata(path: Path, key: str) -> dict:
    try:
        with safe_open(str(path), "pt") as f:
            return json.loads((f.metadata() or {}).get("ode_pairs", "{}"))
    except Exception as error:
        raise ValueError(f"{key}: {path} is not a readable ODE pairs file ({type(error).__name__})") from None


def write_pairs(path: Path, pairs: dict[str, torch.Tensor], metadata: dict) -> None:
    """Atomically: a partial file renamed into place, so a killed run never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    save_file({k: v.contiguous() for k, v in pairs.items()}, partial, metadata={"ode_pairs": json.dumps(metadata)})
    os.replace(partial, path)


def load_or_make(teacher: Denoiser, modality, settings: PairSettings, device: torch.device,
                 pairs_file: str | None, pairs_dir: str | None, batch: int = 64, key: str = "objective.pairs_file"
                 ) -> dict[str, torch.Tensor]:
    """The pairs from `pairs_file` (checked against this teacher and these settings), or from `pairs_dir` under a
    name derived from both, or made now (and written there by rank 0)."""
    digest = teacher_hash(teacher)
    wanted = describe(settings, digest)
    path = Path(pairs_file) if pairs_file else Path(pairs_dir) / auto_name(settings, digest) if pairs_dir else None
    if path is not None and path.is_file():
        check_saved(path, read_pairs_metadata(path, key), wanted, key)
        return load_file(path)
    pairs = make_pairs(teacher, modality, settings, device, batch)  # every rank: a sharded teacher needs all
    if path is not None and parallel.PLACE.main:
        write_pairs(path, pairs, wanted)
    return pairs


def next_rows(cursor: torch.Tensor, count: int, batch: int) -> torch.Tensor:
    """This rank's indices of the next global batch of `batch` rows per rank, cycling through `count` pairs from
    the checkpointed `cursor`, which then moves past the whole global batch (so a resumed run continues)."""
    index = parallel.draw_local(lambda n: (torch.arange(n) + int(cursor)) % count, batch)
    cursor.fill_((int(cursor) + batch * parallel.PLACE.world_size) % count)
    return index
