"""`generator.init_from: RUN_DIR`: start a student from another run's EMA weights (APT and DMD after an ODE
initialisation start this way, reference §8, §9)."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from potstill.core import checkpoint as ckpt
from potstill.core.weights import check_state

KEY = "generator.init_from"


def init_checkpoint(path: str | Path) -> Path:
    """The checkpoint a run directory (its newest intact one) or a checkpoint folder names, weights verified."""
    path = Path(path).expanduser()
    if (path / ckpt.MANIFEST).is_file():
        ckpt.verify_checkpoint(path, ckpt.is_weights_file)
        return path
    if not path.is_dir():
        raise FileNotFoundError(f"{KEY}: {path} is neither a run directory nor a checkpoint folder")
    latest = ckpt.latest_checkpoint(path / "checkpoints", only=ckpt.is_weights_file)
    if latest is None:
        raise FileNotFoundError(f"{KEY}: {path} holds no checkpoint (no {path / 'checkpoints'}/step_*)")
    return latest


def load_init_weights(generator: nn.Module, path: str | Path) -> Path:
    """Copy the EMA student of the run at `path` into `generator`; another architecture is an error listing the
    differing keys. Returns the checkpoint read."""
    checkpoint = init_checkpoint(path)
    state = ckpt.load_weights(checkpoint, "generator_ema")
    check_state(generator.state_dict(), state, KEY, str(checkpoint), "student")
    generator.load_state_dict(state)
    return checkpoint
