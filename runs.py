"""Run directories: start or resume a distillation, and reopen a finished run to sample or evaluate.

A run directory holds `config.yaml` (resolved), `checkpoints/`, `logs/` (JSONL and TensorBoard),
`samples/` and `report.json`."""

from __future__ import annotations

import time
from pathlib import Path

from potstill.core import checkpoint as ckpt
from potstill.core.config import RunConfig, load_config
from potstill.core.distiller import Distiller


def default_run_dir(config_path: str | Path) -> Path:
    return Path("runs") / f"{Path(config_path).stem}-{time.strftime('%Y%m%d-%H%M%S')}"


def distill(config: RunConfig, run_dir: Path, resume: bool = False) -> Distiller:
    """Train to `train.steps`, then write the final checkpoint, a sample grid and `report.json`."""
    run_dir = Path(run_dir)
    has_checkpoint = ckpt.latest_checkpoint(run_dir / "checkpoints") is not None
    if has_checkpoint and not resume:
        raise FileExistsError(f"{run_dir}: already holds a run; pass --resume to continue it, or another --out")
    distiller = Distiller(config, run_dir)
    distiller.run_dir = distiller.engine.broadcast(run_dir)     # ranks agree on a time-stamped default
    if resume and not has_checkpoint:
        raise FileNotFoundError(f"{run_dir}: --resume given but the run has no checkpoint")
    if resume:
        distiller.resume()
    if distiller.engine.is_main:
        distiller.write_config()
    distiller.train()
    distiller.save()
    distiller.save_samples()
    distiller.evaluate()
    return distiller


def find_run(path: str | Path) -> tuple[Path, Path]:
    """(run directory, checkpoint) from a run directory or one of its checkpoint folders."""
    path = Path(path)
    if (path / ckpt.STATE_FILE).is_file():
        return path.parent.parent, path
    if not (path / "config.yaml").is_file():
        raise FileNotFoundError(f"{path}: neither a run directory (no config.yaml) nor a checkpoint folder")
    latest = ckpt.latest_checkpoint(path / "checkpoints")
    if latest is None:
        raise FileNotFoundError(f"{path}: the run has no checkpoint yet")
    return path, latest


def open_run(path: str | Path) -> Distiller:
    """Rebuild a run from its directory and load its weights (not its optimizer state) in this one process,
    whatever engine trained it: checkpoints hold every model whole, as safetensors. Its real data is not
    needed (nor opened), so a run sampled elsewhere needs no copy of its shards."""
    run_dir, checkpoint = find_run(path)
    config = load_config(run_dir / "config.yaml", ["engine=plain"])
    distiller = Distiller(config, run_dir, with_real_data=False)
    distiller.load(checkpoint, training_state=False)
    distiller.step = ckpt.load_state(checkpoint)["step"]
    return distiller
