"""A tiny tones teacher file made by `potstill train-teacher` from the shipped teacher config, for the tests that
run the audio configs: 512-sample clips at 8 kHz as spectrograms (9 frames of 256 bins, one token a frame), two
blocks."""

from pathlib import Path

from potstill.cli import main
from tests_support import CONFIGS

AUDIO = CONFIGS / "audio"
TINY_BACKBONE = ["backbone.hidden_size=32", "backbone.depth=2", "backbone.num_heads=2"]
TINY_LAW = ["real_data.length=512", "real_data.classes=[[8], [12], [8, 10]]"]     # backbone.num_classes follows


def train_tiny_tones_teacher(folder: Path, extra=()) -> Path:
    """A 2-step tones teacher of 512-sample clips in three classes; its file's path."""
    main(["train-teacher", str(AUDIO / "tones_teacher.yaml"), "--out", str(folder), "--set", *TINY_BACKBONE,
          *TINY_LAW, "train.steps=2", "train.batch_size=4", "train.progress=false", *extra])
    return folder / "teacher.safetensors"
