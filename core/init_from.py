"""`generator.init_from: RUN_DIR`: start a student from another run's EMA weights (APT and DMD after an ODE
initialisation start this way, reference §8, §9); `fake_score.init_from`: a fake score from another run's (SiDA
after SiD)."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from potstill.core import checkpoint as ckpt
from potstill.core.weights import check_state

KEY = "generator.init_from"


def init_checkpoint(path: str | Path, key: str = KEY) -> Path:
    """The checkpoint a run directory (its newest intact one) or a checkpoint folder names, weights verified."""
    path = Path(path).expanduser()
    if (path / ckpt.MANIFEST).is_file():
        ckpt.verify_checkpoint(path, ckpt.is_weights_file)
        return path
    if not path.is_dir():
        raise FileNotFoundError(f"{key}: {path} is neither a run directory nor a checkpoint folder")
    latest = ckpt.latest_checkpoint(path / "checkpoints", only=ckpt.is_weights_file)
    if latest is None:
        raise FileNotFoundError(f"{key}: {path} holds no checkpoint (no {path / 'checkpoints'}/step_*)")
    return latest


def load_init_weights(module: nn.Module, path: str | Path, saved: str = "generator_ema", key: str = KEY,
                      what: str = "student") -> Path:
    """Copy the model saved as `saved` (the EMA student by default) in the run at `path` into `module`; another
    architecture is an error listing the differing keys. Returns the checkpoint read."""
    checkpoint = init_checkpoint(path, key)
    state = ckpt.load_weights(checkpoint, saved)
    check_state(module.state_dict(), state, key, str(checkpoint), what)
    module.load_state_dict(state)
    return checkpoint
