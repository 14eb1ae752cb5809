"""Tones written as wav, flac, ogg and mp3 at mixed rates and channel counts (one file corrupt), packed with one
shard truncated: one epoch read as 2 ranks x 2 workers delivers every intact clip once at the run's rate and
length and counts the bad ones, and `tones_arc_shards.yaml` takes ARC steps on 2 DeepSpeed ranks streaming them."""

import json

import numpy as np
import pytest
import torch
from audio_fixtures import AUDIO, train_tiny_tones_teacher
from media_fixtures import audio_bytes, corrupt, pack_folder, truncate_inside
from test_deepspeed import QUICK, distill_command, run_launch

from potstill.cli import main
from potstill.core.config import from_dict
from potstill.data.inspect_shards import check_epoch
from potstill.data.tones import TonesOptions, tone_clips
from potstill.data.webdataset_source import WebDatasetOptions
from tests_support import ROOT

FORMATS = [("wav", 8000, 1), ("flac", 16000, 2), ("ogg", 22050, 1), ("mp3", 44100, 2)]   # extension, Hz, channels
CLIPS = 24
LENGTH = 512              # the tiny teacher's clips (audio_fixtures.TINY_LAW)


def resampled(clip: np.ndarray, rate: int, channels: int) -> np.ndarray:
    """A [L] clip at 8 kHz as [L * rate / 8000, channels] (band-limited: the tones lie far below 4 kHz)."""
    spectrum = np.fft.rfft(clip)
    length = len(clip) * rate // 8000
    wave = np.fft.irfft(spectrum, length) * length / len(clip)
    return np.repeat(wave[:, None], channels, axis=1).astype(np.float32)


@pytest.fixture(scope="module")
def mixed_shards(tmp_path_factory):
    """24 tones of the tiny law in four formats, one corrupt, 4 a shard, the second shard cut inside its 3rd
    file; returns the shard pattern and the keys that should arrive."""
    root = tmp_path_factory.mktemp("mixed")
    folder = root / "src"
    folder.mkdir()
    law = TonesOptions(length=LENGTH, classes=[[8], [12], [8, 10]]).resolved()
    clips, labels = tone_clips(CLIPS, law, torch.Generator().manual_seed(3))
    for index, (clip, label) in enumerate(zip(clips[:, 0].numpy(), labels.tolist(), strict=True)):
        extension, rate, channels = FORMATS[index % len(FORMATS)]
        (folder / f"tone-{index:03d}.{extension}").write_bytes(audio_bytes(resampled(clip, rate, channels), rate,
                                                                           extension))
        (folder / f"tone-{index:03d}.cls").write_text(str(label))
    corrupt(folder, "tone-005")
    shards = pack_folder(folder, root / "shards", maxcount=4)
    kept = truncate_inside(shards[1], 4)
    lost = {f"tone-{i:03d}" for i in range(4, 8)} - set(kept)
    intact = {f"tone-{i:03d}" for i in range(CLIPS)} - lost - {"tone-005"}
    return str(root / "shards" / f"part-{{000000..{len(shards) - 1:06d}}}.tar"), intact


def test_two_ranks_two_workers_read_every_intact_clip_once(mixed_shards):
    pattern, intact = mixed_shards
    options = from_dict(WebDatasetOptions, {"shards": pattern, "media": "audio", "workers": 2, "condition": "label",
                                            "audio": {"sample_rate": 8000, "channels": 1, "length": LENGTH,
                                                      "start": "first"}}, "real_data")
    epoch = check_epoch(options, ranks=2, batch_rows=3)
    delivered = [key for rank in epoch.keys for key in rank]
    assert sorted(delivered) == sorted(intact) and epoch.duplicates == 0
    assert epoch.shape == (1, LENGTH)
    assert sum(r["bad_shards"] for r in epoch.reports) == 1 and sum(r["skipped"] for r in epoch.reports) >= 1


def test_arc_streams_the_mixed_shards_on_two_ranks(mixed_shards, tmp_path):
    pattern, intact = mixed_shards
    teacher = train_tiny_tones_teacher(tmp_path / "teacher")
    run = [*QUICK, f"teacher.checkpoint={teacher}", f"real_data.shards={pattern}", "real_data.shuffle_buffer=4",
           "train.steps=8", "train.batch_size=8", "train.checkpoint_every=0", "eval.n_samples=8", "eval.batch_size=8",
           "modality.classifier=null", "engine.kind=deepspeed", "engine.zero_stage=2"]
    run_launch(distill_command(AUDIO / "tones_arc_shards.yaml", tmp_path / "arc", run), ROOT)
    rows = [json.loads(line) for line in (tmp_path / "arc" / "logs" / "metrics.jsonl").read_text().splitlines()]
    trained = [row for row in rows if "data_samples" in row]
    assert trained[-1]["step"] == 8 and trained[-1]["data_samples"] >= 8 * 8 > len(intact)    # epochs went by
    assert trained[-1]["data_bad_shards"] >= 1 and trained[-1]["data_skipped"] >= 1
    report = json.loads((tmp_path / "arc" / "report.json").read_text())
    assert {"pitch_accuracy", "purity"} <= set(report["student"])


def test_data_tones_writes_the_teachers_law_for_the_packer(tmp_path, capsys):
    teacher = train_tiny_tones_teacher(tmp_path / "teacher")
    main(["data", "tones", str(tmp_path / "wav"), "--teacher", str(teacher), "--n", "6"])
    assert "pack them with" in capsys.readouterr().out
    wavs = sorted((tmp_path / "wav").glob("*.wav"))
    assert len(wavs) == 6 and all(p.with_suffix(".cls").is_file() for p in wavs)
    main(["data", "pack", str(tmp_path / "wav"), str(tmp_path / "shards" / "tones-%06d.tar"), "--maxcount", "3"])
    options = from_dict(WebDatasetOptions, {"shards": str(tmp_path / "shards" / "tones-{000000..000001}.tar"),
                                            "media": "audio", "condition": "label",
                                            "audio": {"sample_rate": 8000, "channels": 1, "length": LENGTH}},
                        "real_data")
    epoch = check_epoch(options)
    assert len(epoch.keys[0]) == 6 and epoch.shape == (1, LENGTH)
