"""The audio representations besides the waveform: the spectrogram round trip is exact on the tones (Griffin-Lim over
frames wrapped around the clip), the mel one keeps their pitch, a tiny autoencoder
trained by `scripts/train_audio_codec.py` in the test reconstructs them, a teacher trained through either codec
records it in its file, and its students encode real clips, decode samples and write wav clips of the data's
length; a missing or mismatched codec file and unfit shapes are refused by key."""

import json
import subprocess
import sys

import pytest
import soundfile
import torch
from audio_fixtures import AUDIO, TINY_BACKBONE, TINY_LAW

from potstill.cli import main
from potstill.core.config import ConfigError
from potstill.core.teacher_file import read_teacher_file
from potstill.data.tones import TonesOptions, tone_clips
from potstill.modalities.audio_codecs import (
    AutoencoderCodec,
    AutoencoderCodecOptions,
    MelCodec,
    MelCodecOptions,
    SpectrogramCodec,
    SpectrogramCodecOptions,
)
from potstill.modalities.audio_scores import tone_scores
from tests_support import ROOT

QUICK = ["train.steps=2", "train.batch_size=4", "train.log_every=1", "train.progress=false", "eval.n_samples=8",
         "eval.batch_size=8", "train.checkpoint_every=0", "modality.classifier=null"]
TINY_MEL = ["codec.kind=mel", "codec.sample_rate=8000", "codec.n_fft=256", "codec.hop_length=64", "codec.n_mels=32"]
LATENT_CHANNELS = 4


def default_law() -> TonesOptions:
    return TonesOptions().resolved()


def test_spectrogram_round_trip_is_exact_on_the_tones_and_shapes_invert():
    law = default_law()
    clips, labels = tone_clips(64, law, torch.Generator().manual_seed(0))
    codec = SpectrogramCodec(SpectrogramCodecOptions())
    frames = codec.encode(clips)
    assert frames.shape == (64, *codec.sample_shape((1, law.length))) == (64, law.length // 2, 9)
    assert frames.min() >= -1.01 and frames.max() < 3
    decoded = codec.decode(frames)
    scores = tone_scores(decoded, labels, law)
    assert scores["pitch_accuracy"] == 1 and scores["purity"] > 0.995 and scores["partial_spread"] < 0.01
    stereo = SpectrogramCodec(SpectrogramCodecOptions(channels=2))
    assert stereo.sample_shape((2, 512)) == (512, 9) and stereo.data_shape((512, 9)) == (2, 512)


def test_spectrogram_frames_a_clip_circularly_so_every_frame_of_a_tone_is_alike():
    """Wrapped ends give a whole-period tone one spectrum in all 9 frames; reflected ends (torch.stft's default)
    would not."""
    law = default_law()
    clips, _ = tone_clips(4, law, torch.Generator().manual_seed(1))
    frames = SpectrogramCodec(SpectrogramCodecOptions()).encode(clips)
    assert (frames - frames[..., :1]).abs().max() < 1e-3


def test_spectrogram_settings_are_checked_by_key():
    with pytest.raises(ConfigError, match=r"codec\.hops"):
        SpectrogramCodecOptions(hops=0)
    with pytest.raises(ConfigError, match=r"codec\.floor"):
        SpectrogramCodecOptions(floor=2.0)
    with pytest.raises(ValueError, match=r"codec\.hops: clips of 1004 samples are not 8 hops"):
        SpectrogramCodec(SpectrogramCodecOptions()).sample_shape((1, 1004))
    assert SpectrogramCodec(SpectrogramCodecOptions()).sample_shape((1, 1000)) == (500, 9)
    with pytest.raises(ValueError, match=r"codec\.channels: the spectrogram codec takes 1-channel clips, the data "):
        SpectrogramCodec(SpectrogramCodecOptions()).sample_shape((2, 1024))


def test_mel_round_trip_keeps_pitch():
    law = default_law()
    clips, labels = tone_clips(64, law, torch.Generator().manual_seed(0))
    codec = MelCodec(MelCodecOptions(sample_rate=law.sample_rate))
    frames = codec.encode(clips)
    assert frames.shape == (64, *codec.sample_shape((1, law.length))) == (64, 256, law.length // 128 + 1)
    assert frames.min() >= -1.01 and frames.max() < 3
    decoded = codec.decode(frames)
    assert decoded.shape == clips.shape
    scores = tone_scores(decoded, labels, law)
    assert scores["pitch_accuracy"] >= 0.95 and scores["purity"] >= 0.9
    assert codec.data_shape(codec.sample_shape((1, law.length))) == (1, law.length)


def test_mel_settings_are_checked_by_key():
    with pytest.raises(ConfigError, match=r"codec\.sample_rate"):
        MelCodecOptions()
    with pytest.raises(ValueError, match=r"codec\.hop_length: 128 does not divide the clip length 1000"):
        MelCodec(MelCodecOptions(sample_rate=8000)).sample_shape((1, 1000))
    with pytest.raises(ValueError, match=r"codec\.n_fft: 2048 is longer than the clips \(1024 samples\)"):
        MelCodec(MelCodecOptions(sample_rate=8000, n_fft=2048)).sample_shape((1, 1024))


@pytest.fixture(scope="module")
def tiny_codec(tmp_path_factory):
    """A 4-latent-channel autoencoder (hop 8) trained for 400 steps on the tiny tones law, by the shipped script."""
    out = tmp_path_factory.mktemp("codec") / "codec.safetensors"
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "train_audio_codec.py"), str(AUDIO / "tones_teacher_waveform.yaml"),
         "--out", str(out), "--steps", "400", "--batch", "16", "--latent-channels", str(LATENT_CHANNELS), "--hidden",
         "32", "--set", *TINY_LAW], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return out, done.stdout


def test_trained_autoencoder_reconstructs_the_tones(tiny_codec):
    path, stdout = tiny_codec
    scores = dict(part.rsplit(" ", 1) for part in stdout.strip().splitlines()[-1].split("round trip: ")[1].split(", "))
    assert float(scores["relative_error"]) < 0.1
    assert float(scores["pitch_accuracy"]) >= 0.95 and float(scores["purity"]) > 0.8
    codec = AutoencoderCodec(AutoencoderCodecOptions(latent_channels=LATENT_CHANNELS, hidden=32, path=str(path)))
    assert codec.sample_shape((1, 512)) == (LATENT_CHANNELS, 64) and codec.data_shape((LATENT_CHANNELS, 64)) == (1, 512)
    assert not any(p.requires_grad for p in codec.parameters())


def test_codec_files_and_shapes_are_refused_by_key(tiny_codec, tmp_path):
    path, _ = tiny_codec
    with pytest.raises(FileNotFoundError, match=r"codec\.path"):
        AutoencoderCodec(AutoencoderCodecOptions(path=str(tmp_path / "missing.safetensors")))
    with pytest.raises(ValueError, match=r"codec\.path: .* does not match the codec configuration"):
        AutoencoderCodec(AutoencoderCodecOptions(latent_channels=8, hidden=32, path=str(path)))
    codec = AutoencoderCodec(AutoencoderCodecOptions(latent_channels=LATENT_CHANNELS, hidden=32, path=str(path)))
    with pytest.raises(ValueError, match=r"codec\.channels"):
        codec.sample_shape((2, 512))
    with pytest.raises(ValueError, match=r"codec\.hop: 8 does not divide the clip length 500"):
        codec.sample_shape((1, 500))
    with pytest.raises(ConfigError, match=r"codec\.path"):
        AutoencoderCodecOptions()


def train_teacher_through(folder, codec_settings):
    main(["train-teacher", str(AUDIO / "tones_teacher_waveform.yaml"), "--out", str(folder), "--set",
          *TINY_BACKBONE, *TINY_LAW, "backbone.patch_size=1", "train.steps=2", "train.batch_size=4",
          "train.progress=false", *codec_settings])
    return folder / "teacher.safetensors"


def autoencoder_settings(path):
    return ["codec.kind=autoencoder", f"codec.path={path}", f"codec.latent_channels={LATENT_CHANNELS}",
            "codec.hidden=32", f"backbone.in_channels={LATENT_CHANNELS}"]


@pytest.mark.parametrize(("representation", "method"), [("autoencoder", "arc"), ("mel", "dmd2")])
def test_a_teacher_trained_through_a_codec_distils_and_writes_clips(representation, method, tiny_codec, tmp_path):
    """ARC (real clips encoded as its generator's inputs) on 64 latent frames; DMD2 with its GAN head (real clips
    encoded for the discriminator) on 9 mel frames, fewer than ARC's conv head takes."""
    settings = autoencoder_settings(tiny_codec[0]) if representation == "autoencoder" else [*TINY_MEL,
                                                                                         "backbone.in_channels=32"]
    teacher = train_teacher_through(tmp_path / "teacher", settings)
    _, metadata = read_teacher_file(str(teacher))
    assert metadata["codec"]["kind"] == representation
    assert metadata["sample_shape"] == ([LATENT_CHANNELS, 64] if representation == "autoencoder" else [32, 9])
    run = tmp_path / method
    main(["distill", str(AUDIO / f"tones_{method}.yaml"), "--out", str(run), "--set", f"teacher.checkpoint={teacher}",
          *QUICK])
    assert {"pitch_accuracy", "purity"} <= set(json.loads((run / "report.json").read_text())["student"])
    main(["sample", str(run), "--n", "2", "--class", "1", "--out", str(tmp_path / "wavs")])
    audio, rate = soundfile.read(tmp_path / "wavs" / "sample_0000_class1.wav", always_2d=True)
    assert rate == 8000 and audio.shape == (512, 1)
    main(["sample", str(run), "--n", "2", "--out", str(tmp_path / "x.pt")])
    assert torch.load(tmp_path / "x.pt").shape == (2, 1, 512)


def test_a_codec_the_teacher_was_not_trained_through_is_refused(tmp_path, capsys):
    teacher = train_teacher_through(tmp_path / "teacher", [])
    with pytest.raises(SystemExit):
        main(["distill", str(AUDIO / "tones_dmd2.yaml"), "--out", str(tmp_path / "run"), "--set",
              f"teacher.checkpoint={teacher}", *QUICK, *TINY_MEL])
    assert "codec.kind: the teacher's samples are [1, 512], which codec 'mel' does not make" in capsys.readouterr().err
