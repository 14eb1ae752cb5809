"""The moving_digits dataset: exact rolls at a velocity from the set, uniform start positions, seeded and
exactly resumable, null settings taken from the teacher's law, and bad settings refused naming their key."""

import itertools
import re
from types import SimpleNamespace

import pytest
import torch

from potstill.core.config import ConfigError, load_component
from potstill.core.real_data import SeededStream
from potstill.core.registry import DATASETS
from potstill.data.moving_digits import moving_digit_clips

VELOCITIES = [[0, 1], [1, 0], [0, -1], [-1, 0]]


def build(teacher_law: dict | None = None, **options) -> SeededStream:
    component = load_component("real_data", {"kind": "moving_digits", **options})
    teacher = SimpleNamespace(metadata={"data": teacher_law}) if teacher_law is not None else None
    return DATASETS.get("moving_digits").builder(component.options, SimpleNamespace(teacher=teacher))


def moves_by(clip: torch.Tensor, v: list[int]) -> bool:
    """Each frame of `clip` [F, H, W] is exactly the previous one rolled by `v`."""
    return all(torch.equal(torch.roll(before, shifts=tuple(v), dims=(-2, -1)), after)
               for before, after in itertools.pairwise(clip))


def test_clips_roll_exactly_by_a_velocity_of_the_set():
    velocities = [[0, 1], [2, -1], [-3, 0]]
    clips, labels = build(canvas=13, frames=6, velocities=velocities).next(64)
    assert clips.shape == (64, 1, 6, 13, 13) and clips.dtype == torch.float32
    assert labels.shape == (64,) and labels.dtype == torch.long and labels.max() <= 9
    assert clips.min() == -1 and clips.max() <= 1
    used = set()
    for clip in clips[:, 0]:
        moves = [v for v in velocities if moves_by(clip, v)]
        assert len(moves) == 1
        used.add(tuple(moves[0]))
    assert used == {tuple(v) for v in velocities}


def test_start_positions_cover_the_torus():
    clips, _ = moving_digit_clips(3000, 12, 2, [[0, 1]], torch.Generator().manual_seed(1))
    ink = ((clips[:, 0, 0] + 1) / 2).mean(0)
    assert ink.max() / ink.min() < 1.3


def test_default_options_and_digit_subset():
    stream = build()
    clips, _ = stream.next(3)
    assert clips.shape == (3, 1, 8, 12, 12) and stream.options.velocities == VELOCITIES
    _, labels = build(digits=[3, 7]).next(200)
    assert set(labels.tolist()) == {3, 7}


def test_null_settings_follow_the_teacher_law():
    law = {"kind": "moving_digits", "canvas": 10, "frames": 5, "velocities": [[1, 1]], "seed": 7}
    clips, _ = build(law, frames=3).next(4)
    assert clips.shape == (4, 1, 3, 10, 10) and all(moves_by(clip, [1, 1]) for clip in clips[:, 0])
    other = {"kind": "webdataset", "canvas": 10}
    assert build(other).next(1)[0].shape == (1, 1, 8, 12, 12)


def test_seeded_and_resumes_exactly():
    assert torch.equal(build(seed=5).next(4)[0], build(seed=5).next(4)[0])
    assert not torch.equal(build(seed=5).next(4)[0], build(seed=6).next(4)[0])
    first = build(seed=3)
    first.next(10)
    state = first.state_dict()
    expected = [first.next(7), first.next(2)]
    resumed = build(seed=99)
    resumed.load_state_dict(state)
    for clips, labels in expected:
        again, again_labels = resumed.next(len(clips))
        assert torch.equal(again, clips) and torch.equal(again_labels, labels)


@pytest.mark.parametrize(("options", "key"), [
    ({"canvas": 7}, "real_data.canvas"),
    ({"frames": 1}, "real_data.frames"),
    ({"velocities": []}, "real_data.velocities"),
    ({"velocities": [[0, 1], [1]]}, "real_data.velocities[1]"),
    ({"velocities": [[12, 0]]}, "real_data.velocities[0]"),
    ({"velocities": [[0.5, 0]]}, "real_data.velocities"),
    ({"digits": [10]}, "real_data.digits"),
    ({"digits": "some"}, "real_data.digits"),
])
def test_bad_settings_name_their_key(options, key):
    with pytest.raises(ConfigError, match=f"^{re.escape(key)}"):
        build(**options)
