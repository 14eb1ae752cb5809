"""The video modality on a stub moving-digits teacher: real clips obey the law exactly, shuffled frames do not,
the toy FVD and class recall separate real from broken clips, and the PNG strip and MP4 views decode back."""

import sys
from types import SimpleNamespace

import av
import numpy
import pytest
import torch
from PIL import Image

from potstill.backbones.video_classifier import VideoClassifier
from potstill.core.config import ConfigError, load_component
from potstill.core.registry import MODALITIES
from potstill.data.moving_digits import moving_digit_clips
from potstill.modalities.video import VideoModality
from potstill.modalities.video_scores import law_scores, range_means

VELOCITIES = [[0, 1], [1, 0], [0, -1], [-1, 0]]
LAW = {"kind": "moving_digits", "canvas": 12, "frames": 8, "velocities": VELOCITIES, "seed": 0}


def stub_teacher(metadata: dict | None = None, shape=(1, 8, 12, 12)) -> SimpleNamespace:
    return SimpleNamespace(sample_shape=shape, num_classes=10, metadata={"data": LAW} if metadata is None else metadata)


def build(teacher: SimpleNamespace | None = None, **options) -> VideoModality:
    component = load_component("modality", {"kind": "video", **options})
    return MODALITIES.get("video").builder(component.options, SimpleNamespace(teacher=teacher or stub_teacher()))


@pytest.fixture(scope="module")
def modality() -> VideoModality:
    return build()


def real_clips(n: int, frames: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    return moving_digit_clips(n, 12, frames, VELOCITIES, torch.Generator().manual_seed(seed))


def test_shapes_inputs_and_options():
    long = build(frames=30, classifier=None)
    assert long.sample_shape == (1, 30, 12, 12) and long.headline_metric() == "shift_residual"
    noise, labels = long.draw_inputs(40, torch.Generator().manual_seed(0))
    assert noise.shape == (40, 1, 30, 12, 12) and labels.min() >= 0 and labels.max() <= 9
    with pytest.raises(ConfigError, match=r"^modality\.frames"):
        build(frames=1)
    with pytest.raises(ValueError, match=r"^modality\.kind"):
        build(stub_teacher(shape=(1, 12, 12)))
    with pytest.raises(ValueError, match=r"^teacher"):
        build(stub_teacher(shape=(1, 8, 16, 16)))
    with pytest.raises(ValueError, match=r"^modality\.classifier"):
        build(classifier="embedded:digits_classifier")


def test_real_clips_obey_the_law_and_shuffled_frames_do_not():
    clips, _ = real_clips(60, frames=30)
    scores = law_scores(clips, VELOCITIES)
    assert scores["shift_residual"] == 0 and scores["velocity_in_set"] == 1
    assert {k for k in scores if k.startswith("shift_residual_")} == {
        "shift_residual_1_12", "shift_residual_13_24", "shift_residual_25_36"}
    shuffled = clips[:, :, torch.randperm(30, generator=torch.Generator().manual_seed(0))]
    broken = law_scores(shuffled, VELOCITIES)
    assert broken["shift_residual"] > 0.3 and broken["velocity_in_set"] < 0.5
    diagonal, _ = moving_digit_clips(50, 12, 8, [[1, 1]], torch.Generator().manual_seed(0))
    outside = law_scores(diagonal, VELOCITIES)
    assert outside["velocity_in_set"] == 0 and outside["shift_residual"] > 0.3


def test_range_means_number_frames_from_one():
    values = torch.arange(24, dtype=torch.float32)[None].repeat(2, 1)   # transitions into frames 2..25
    means = range_means(values, "r")
    assert means == {"r_1_12": 5.0, "r_13_24": 16.5, "r_25_36": 23.0}


def test_classifier_fvd_and_recall(modality):
    """Real clips score near the finite-sample floor (about 3-5 for 600 clips against the 1000 reference ones);
    scrambled frames, other velocities and noise score far above it."""
    assert modality.headline_metric() == "fvd_toy"
    clips, labels = real_clips(600, seed=1)
    real = modality.evaluate(clips, labels)
    assert real["shift_residual"] == 0 and real["class_recall_mean"] > 0.97 and real["fvd_toy"] < 8
    scrambled = modality.evaluate(clips[:, :, [3, 0, 6, 1, 7, 4, 2, 5]], labels)
    diagonal, diagonal_labels = moving_digit_clips(600, 12, 8, [[2, 2], [-2, 1]], torch.Generator().manual_seed(1))
    noise = modality.evaluate(torch.rand_like(clips) * 2 - 1, labels)
    assert scrambled["fvd_toy"] > 3 * real["fvd_toy"] and noise["fvd_toy"] > 50 * real["fvd_toy"]
    assert modality.evaluate(diagonal, diagonal_labels)["fvd_toy"] > 3 * real["fvd_toy"]
    assert noise["class_recall_mean"] < 0.5


def test_classifier_handles_any_canvas_and_frame_count(modality):
    for canvas, frames in [(10, 6), (16, 16), (12, 48)]:
        clips, labels = moving_digit_clips(200, canvas, frames, VELOCITIES, torch.Generator().manual_seed(2))
        logits, features = modality.classifier(clips)
        assert features.shape == (200, VideoClassifier.feature_dim)
        assert (logits.argmax(1) == labels).float().mean() > 0.95


def test_without_the_law_only_class_scores():
    other = build(stub_teacher(metadata={}))
    clips, labels = real_clips(50)
    assert set(other.evaluate(clips, labels)) == {"class_recall_mean", "class_recall_min"}
    assert build(stub_teacher(metadata={}), classifier=None).evaluate(clips, labels) == {}


def test_png_strip_one_row_per_clip_sorted_by_label(modality, tmp_path):
    clips, labels = real_clips(5)
    path = modality.save_samples(clips, labels, tmp_path / "step_00000010")
    assert path == tmp_path / "step_00000010.png" and list(tmp_path.iterdir()) == [path]
    strip = torch.from_numpy(numpy.array(Image.open(path).convert("L"))).float()
    assert strip.shape == (5 * 13 + 1, 8 * 13 + 1)
    first = clips[labels.argmin(), 0, 0]
    assert torch.allclose(strip[1:13, 1:13] / 255, (first + 1) / 2, atol=1 / 255)
    with pytest.raises(ValueError, match=r"\.mp4 or \.png"):
        modality.save_samples(clips, labels, tmp_path / "clips.gif")


def decoded(path) -> list:
    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


@pytest.mark.parametrize("codecs", ["default", "without_libx264"])
def test_mp4_decodes_back_with_every_frame(modality, tmp_path, monkeypatch, codecs):
    if codecs == "without_libx264":
        monkeypatch.setattr(av, "codecs_available", set(av.codecs_available) - {"libx264"})
    clips, labels = real_clips(10, frames=7)
    path = modality.save_samples(clips, labels, tmp_path / "clips.mp4")
    assert path == tmp_path / "clips.mp4" and list(tmp_path.iterdir()) == [path]
    frames = decoded(path)
    assert len(frames) == 7
    height, width, _ = frames[0].shape
    assert height >= 2 * 64 and width >= 8 * 64 and height % 2 == 0 and width % 2 == 0


def test_mp4_without_pyav_says_what_to_install(modality, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "av", None)
    clips, labels = real_clips(2)
    with pytest.raises(ValueError, match=r"writing \.mp4 needs PyAV: pip install av"):
        modality.save_samples(clips, labels, tmp_path / "clips.mp4")


def test_long_clips_score_whether_the_digit_stays_the_same(modality):
    """`class_kept` compares the classifier's class of the first and last 12 frames, `class_recall_last` the
    last 12 frames' class with the label: real 48-frame clips keep their digit; clips whose last frames show
    another clip's digit do not."""
    clips, labels = real_clips(300, frames=48, seed=3)
    others, other_labels = real_clips(300, frames=48, seed=4)
    real = modality.evaluate(clips, labels)
    assert real["class_kept"] > 0.95 and real["class_recall_last"] > 0.95
    spliced = modality.evaluate(torch.cat([clips[:, :, :36], others[:, :, 36:]], dim=2), labels)
    chance = (labels == other_labels).float().mean() + 0.1
    assert spliced["class_kept"] < chance and spliced["class_recall_last"] < chance
    assert "class_kept" not in modality.evaluate(*real_clips(20))


def test_a_changed_class_is_told_lost_or_corrected(modality):
    """A clip that begins as its label and ends as another digit lost its class; one that begins as another
    digit and ends as its label was corrected; real clips do neither."""
    clips, labels = real_clips(300, frames=48, seed=3)
    others, other_labels = real_clips(300, frames=48, seed=4)
    differ = float((labels != other_labels).float().mean())
    real = modality.evaluate(clips, labels)
    assert real["class_lost"] < 0.05 and real["class_corrected"] < 0.05
    lost = modality.evaluate(torch.cat([clips[:, :, :36], others[:, :, 36:]], dim=2), labels)
    assert lost["class_lost"] > differ - 0.1 and lost["class_corrected"] < 0.05
    corrected = modality.evaluate(torch.cat([others[:, :, :36], clips[:, :, 36:]], dim=2), labels)
    assert corrected["class_corrected"] > differ - 0.1 and corrected["class_lost"] < 0.05
