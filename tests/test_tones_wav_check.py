"""The independent wav scorer of the audio check (benchmarks/tones_wav_check.py): real tone clips written as wav
score pitch 1 and purity ~1 class by class; clips filed under another class score pitch 0."""

import soundfile
import torch

from potstill.data.tones import TonesOptions, tone_clips
from tests_support import load_benchmark

CLASSES = [[12], [18], [12, 15, 18]]


def scorer():
    return load_benchmark("tones_wav_check")


def write_class_folders(root, law, labels_as):
    clips, labels = tone_clips(60, law, torch.Generator().manual_seed(0))
    for i, (clip, label) in enumerate(zip(clips, labels.tolist(), strict=True)):
        folder = root / f"class{labels_as[label]}"
        folder.mkdir(parents=True, exist_ok=True)
        soundfile.write(folder / f"sample_{i:04d}.wav", clip[0].numpy(), law.sample_rate, subtype="PCM_16")


def test_real_clips_score_in_pitch_and_pure_and_misfiled_ones_do_not(tmp_path):
    law = TonesOptions(classes=CLASSES, sample_rate=16000, length=2048).resolved()
    write_class_folders(tmp_path / "right", law, [0, 1, 2])
    results = scorer().score_folders(tmp_path / "right", CLASSES, 3)
    assert results["pitch_accuracy"] == 1.0 and results["purity"] > 0.999
    assert [r["rate"] for r in results["classes"]] == [16000] * 3 and results["classes"][0]["length"] == 2048
    write_class_folders(tmp_path / "swapped", law, [1, 0, 2])
    swapped = scorer().score_folders(tmp_path / "swapped", CLASSES, 3)
    assert [r["pitch_accuracy"] for r in swapped["classes"][:2]] == [0.0, 0.0]
