"""Run directories: start or resume a distillation, and reopen a finished run to sample or evaluate.

A run directory holds `config.yaml` (resolved), `checkpoints/`, `logs/` (JSONL and TensorBoard),
`samples/` and `report.json`."""

from __future__ import annotations

import time
from pathlib import Path

from potstill.core import checkpoint as ckpt
from potstill.core.config import RunConfig, load_config, read_yaml, to_dict
from potstill.core.config_changes import check_resume_changes, record_changes, with_defaults
from potstill.core.distiller import Distiller
from potstill.core.engine import NonFiniteError


def default_run_dir(config_path: str | Path) -> Path:
    return Path("runs") / f"{Path(config_path).stem}-{time.strftime('%Y%m%d-%H%M%S')}"


def distill(config: RunConfig, run_dir: Path, resume: bool = False, allow_change: list[str] | None = None
            ) -> Distiller:
    """Train to `train.steps`, then write the final checkpoint, a sample grid and `report.json`. A resume whose
    config differs from the run's is refused unless each changed key is free or in `allow_change`."""
    run_dir = Path(run_dir)
    folder = run_dir / "checkpoints"
    if ckpt.holds_checkpoints(folder) and not resume:
        raise FileExistsError(f"{run_dir}: already holds a run; pass --resume to continue it, or another --out "
                              f"(found checkpoints in {folder})")
    if resume and not ckpt.holds_checkpoints(folder):
        raise FileNotFoundError(f"{run_dir}: --resume given but the run has no checkpoint")
    saved_config = run_dir / "config.yaml"
    changes = (check_resume_changes(with_defaults(read_yaml(saved_config), lambda data: load_config(data=data)),
                                    to_dict(config), allow_change or [])
               if resume and saved_config.is_file() else {})
    distiller = Distiller(config, run_dir)
    distiller.run_dir = distiller.engine.broadcast(run_dir)     # ranks agree on a time-stamped default
    if resume:
        distiller.resume()
    if distiller.engine.is_main:
        if changes:
            record_changes(distiller.run_dir, distiller.step, changes, to_dict(config))
        elif not resume or not saved_config.is_file():
            distiller.write_config()
        announce(distiller, changes)
    try:
        distiller.train()
        distiller.save()
    except NonFiniteError as error:
        raise NonFiniteError(f"{error}; {last_good_checkpoint(distiller.run_dir / 'checkpoints')}") from None
    distiller.save_samples()
    distiller.evaluate()
    return distiller


def announce(distiller: Distiller, changes: dict) -> None:
    """Where the run writes, printed before the first step."""
    run_dir = distiller.run_dir
    action = f"resuming at step {distiller.step}" if distiller.step else "starting"
    print(f"potstill: {action}; run directory: {run_dir}; seed {distiller.config.train.seed}; "
          f"TensorBoard: tensorboard --logdir {run_dir / 'logs' / 'tb'}", flush=True)
    for key, (old, new) in changes.items():
        print(f"potstill: config change on resume: {key}: {old!r} -> {new!r}", flush=True)


def last_good_checkpoint(folder: Path) -> str:
    try:
        latest = ckpt.latest_checkpoint(folder)
    except ckpt.CheckpointError:
        latest = None
    return f"last good checkpoint: {latest} (continue with --resume)" if latest else "the run has no checkpoint yet"


def find_run(path: str | Path) -> tuple[Path, Path]:
    """(run directory, checkpoint) from a run directory or one of its checkpoint folders; the checkpoint's
    weights are verified against its manifest (a run directory's falls back to the newest intact one)."""
    path = Path(path)
    if (path / ckpt.MANIFEST).is_file() or (path / ckpt.STATE_FILE).is_file():
        ckpt.verify_checkpoint(path, ckpt.is_weights_file)
        return path.parent.parent, path
    if not (path / "config.yaml").is_file():
        raise FileNotFoundError(f"{path}: neither a run directory (no config.yaml) nor a checkpoint folder")
    latest = ckpt.latest_checkpoint(path / "checkpoints", only=ckpt.is_weights_file)
    if latest is None:
        raise FileNotFoundError(f"{path}: the run has no checkpoint yet")
    return path, latest


def open_run(path: str | Path, device: str = "auto", overrides: list[str] | None = None) -> Distiller:
    """Rebuild a run from its directory and load its weights (not its optimizer state) in this one process on
    `device`, whatever engine trained it: checkpoints hold every model whole, as safetensors, and the step comes
    from the manifest, so no pickle is read. Its real data is not needed (nor opened), so a run sampled
    elsewhere needs no copy of its shards. `overrides` change sampling-time settings (`modality.frames=48`)."""
    run_dir, checkpoint = find_run(path)
    config = load_config(run_dir / "config.yaml", ["engine=plain", f"engine.device={device}", *(overrides or [])])
    distiller = Distiller(config, run_dir, with_real_data=False)
    distiller.load(checkpoint, training_state=False, verified=True)
    return distiller
