"""Atomic, verified checkpoints: each model's weights as safetensors, optimizer/RNG/step state beside them,
and a manifest of every file's SHA-256.

A checkpoint is written into a hidden staging folder, its files and the folder are fsynced, the manifest
goes in last, and only then is the folder renamed into place and `latest` replaced atomically. A complete
checkpoint is never removed before its replacement is in place. `state.pt` holds tensors and plain values
only, so it is read with `torch.load(weights_only=True)`: opening a run never executes code from it."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

STATE_FILE = "state.pt"
MANIFEST = "manifest.json"
LATEST = "latest"
FOLDER_GLOB = "step_*"

log = logging.getLogger("potstill.checkpoint")


class CheckpointError(ValueError):
    """A checkpoint that is incomplete, damaged or unsafe to read; the message names the file."""


def fsync_path(path: Path) -> None:
    """Flush a file's or a folder's contents to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Replace `path` by `data` so that a reader sees the old or the new file, never a part."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_path(path.parent)


def write_text_atomic(path: Path, text: str) -> None:
    """Replace `path` by `text` (UTF-8) atomically, as `write_bytes_atomic`."""
    write_bytes_atomic(path, text.encode())


def file_digest(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def staging_folder(folder: Path, step: int) -> Path:
    """Where a checkpoint is written before it is renamed into place."""
    return folder / f".step_{step:08d}.tmp"


def final_folder(folder: Path, step: int) -> Path:
    return folder / f"step_{step:08d}"


def clear_folder(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)


def checkpoint_folders(folder: Path) -> list[Path]:
    """The run's renamed-in checkpoint folders, oldest first."""
    return sorted(p for p in folder.glob(FOLDER_GLOB) if p.is_dir())


def holds_checkpoints(folder: Path) -> bool:
    """Whether a checkpoints folder has a `latest` pointer or any checkpoint folder (even a stale one)."""
    return (folder / LATEST).exists() or bool(checkpoint_folders(folder))


def write_checkpoint(staging: Path, weights: dict[str, dict[str, torch.Tensor]], state: dict) -> None:
    """One safetensors file per model and `state.pt`, into the staging folder."""
    for name, tensors in weights.items():
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, staging / f"{name}.safetensors")
    torch.save(state, staging / STATE_FILE)


def write_manifest(staging: Path, step: int) -> None:
    """Digest and fsync every file in the staging folder (any rank's), then write the manifest last."""
    files = {}
    for path in sorted(p for p in staging.rglob("*") if p.is_file() and p != staging / MANIFEST):
        fsync_path(path)
        files[path.relative_to(staging).as_posix()] = {"sha256": file_digest(path), "bytes": path.stat().st_size}
    write_text_atomic(staging / MANIFEST, json.dumps({"step": step, "files": files}, indent=1))
    for sub in sorted((p for p in staging.rglob("*") if p.is_dir()), reverse=True):
        fsync_path(sub)
    fsync_path(staging)


def commit_checkpoint(folder: Path, staging: Path, final: Path, keep: int = 2) -> Path:
    """Rename the staging folder into place, point `latest` at it, and drop older checkpoints beyond `keep`.
    A folder already at `final` is replaced only when it is not a complete checkpoint."""
    if final.exists():
        problem = checkpoint_problem(final)
        if problem is None:
            raise FileExistsError(f"{final}: a complete checkpoint of this step is already in place")
        log.warning("replacing %s, which is not a complete checkpoint (%s)", final, problem)
        shutil.rmtree(final)
    os.replace(staging, final)
    fsync_path(folder)
    write_text_atomic(folder / LATEST, final.name)
    older = [p for p in checkpoint_folders(folder) if p.name < final.name]
    for old in older[: max(len(older) - (keep - 1), 0)]:
        shutil.rmtree(old)
    return final


def save_checkpoint(folder: Path, step: int, weights: dict[str, dict[str, torch.Tensor]], state: dict,
                    keep: int = 2) -> Path:
    """Write `folder/step_XXXXXXXX/` with one safetensors file per model, `state.pt` and the manifest."""
    staging = staging_folder(folder, step)
    clear_folder(staging)
    write_checkpoint(staging, weights, state)
    write_manifest(staging, step)
    return commit_checkpoint(folder, staging, final_folder(folder, step), keep)


def read_manifest(checkpoint: Path) -> dict:
    path = checkpoint / MANIFEST
    if not path.is_file():
        raise CheckpointError(f"{path}: missing, so {checkpoint.name} is not a complete checkpoint")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path}: damaged ({error})") from None


def is_weights_file(name: str) -> bool:
    """Whether a manifest entry is a model's safetensors (what sampling reads), not training state."""
    return name.endswith(".safetensors") and "/" not in name


def verify_checkpoint(checkpoint: Path, only: Callable[[str], bool] | None = None) -> dict:
    """Check the manifest's files (those `only` accepts, default all) against their sizes and SHA-256 digests;
    returns the manifest. A missing, truncated or altered file is a CheckpointError naming it."""
    manifest = read_manifest(checkpoint)
    files = manifest["files"]
    for name in files:
        if only is not None and not only(name):
            continue
        path = checkpoint / name
        if not path.is_file():
            raise CheckpointError(f"{path}: missing")
        size, expected = path.stat().st_size, files[name]["bytes"]
        if size != expected:
            raise CheckpointError(f"{path}: truncated or altered ({size} bytes, the manifest says {expected})")
        if file_digest(path) != files[name]["sha256"]:
            raise CheckpointError(f"{path}: damaged (its SHA-256 differs from the one in {MANIFEST})")
    return manifest


def checkpoint_problem(checkpoint: Path, only: Callable[[str], bool] | None = None) -> str | None:
    """Why a checkpoint folder cannot be used, or None when it verifies."""
    try:
        verify_checkpoint(checkpoint, only)
    except CheckpointError as error:
        return str(error)
    return None


def checkpoint_step(checkpoint: Path) -> int:
    """The step a checkpoint was taken at, from its manifest (no pickle is read)."""
    return int(read_manifest(checkpoint)["step"])


def latest_checkpoint(folder: Path, only: Callable[[str], bool] | None = None) -> Path | None:
    """The checkpoint `latest` points at; when it is missing or damaged, the newest one that verifies, with a
    warning naming both. None when the run has no checkpoint yet; an error when none verifies."""
    if not holds_checkpoints(folder):
        return None
    pointer = folder / LATEST
    named = folder / pointer.read_text().strip() if pointer.is_file() else None
    if named is None:
        problem = f"{pointer}: missing"
    elif not named.is_dir():
        problem = f"{pointer}: points at {named.name}, which does not exist"
    else:
        problem = checkpoint_problem(named, only)
    if problem is None:
        return named
    problems = [problem]
    for candidate in reversed(checkpoint_folders(folder)):
        if candidate == named:
            continue
        found = checkpoint_problem(candidate, only)
        if found is None:
            log.warning("%s; using %s, the newest complete checkpoint", problem, candidate)
            return candidate
        problems.append(found)
    raise CheckpointError(f"{folder}: no complete checkpoint: " + "; ".join(problems))


def load_weights(checkpoint: Path, name: str) -> dict[str, torch.Tensor]:
    path = checkpoint / f"{name}.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint has no weights for {name!r}")
    return load_file(path)


def load_state(checkpoint: Path) -> dict:
    """`state.pt`, read without unpickling any object (tensors and plain values only)."""
    path = checkpoint / STATE_FILE
    try:
        return torch.load(path, weights_only=True)
    except Exception as error:     # torch raises UnpicklingError or RuntimeError, by what it finds
        raise CheckpointError(f"{path}: refused ({type(error).__name__}: {(str(error).splitlines() or [''])[0]}); "
                              "state.pt may hold only tensors and plain values") from None
