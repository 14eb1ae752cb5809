"""Atomic checkpoints: each model's weights as safetensors, optimizer/RNG/step state beside them.

A checkpoint is written into a temporary folder and renamed into place, and `latest` is replaced
atomically after it, so a run killed mid-write leaves the previous checkpoint intact."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

STATE_FILE = "state.pt"
LATEST = "latest"


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def staging_folder(folder: Path, step: int) -> Path:
    """Where a checkpoint is written before it is renamed into place."""
    return folder / f".step_{step:08d}.tmp"


def final_folder(folder: Path, step: int) -> Path:
    return folder / f"step_{step:08d}"


def clear_folder(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)


def write_checkpoint(staging: Path, weights: dict[str, dict[str, torch.Tensor]], state: dict) -> None:
    """One safetensors file per model and `state.pt`, into the staging folder."""
    for name, tensors in weights.items():
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, staging / f"{name}.safetensors")
    torch.save(state, staging / STATE_FILE)


def commit_checkpoint(folder: Path, staging: Path, final: Path, keep: int = 2) -> Path:
    """Rename the staging folder into place, point `latest` at it, and drop all but the newest `keep`."""
    if final.exists():
        shutil.rmtree(final)
    os.replace(staging, final)
    _write_atomic(folder / LATEST, final.name)
    for old in sorted(folder.glob("step_*"))[:-keep] if keep > 0 else []:
        shutil.rmtree(old)
    return final


def save_checkpoint(folder: Path, step: int, weights: dict[str, dict[str, torch.Tensor]], state: dict,
                    keep: int = 2) -> Path:
    """Write `folder/step_XXXXXXXX/` with one safetensors file per model and `state.pt`, atomically."""
    staging = staging_folder(folder, step)
    clear_folder(staging)
    write_checkpoint(staging, weights, state)
    return commit_checkpoint(folder, staging, final_folder(folder, step), keep)


def latest_checkpoint(folder: Path) -> Path | None:
    """The folder `latest` points at, or None when the run has no checkpoint yet."""
    pointer = folder / LATEST
    if not pointer.is_file():
        return None
    path = folder / pointer.read_text().strip()
    if not (path / STATE_FILE).is_file():
        raise FileNotFoundError(f"{pointer}: points at {path.name}, which has no {STATE_FILE}")
    return path


def load_weights(checkpoint: Path, name: str) -> dict[str, torch.Tensor]:
    path = checkpoint / f"{name}.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint has no weights for {name!r}")
    return load_file(path)


def load_state(checkpoint: Path) -> dict:
    return torch.load(checkpoint / STATE_FILE, weights_only=False)
