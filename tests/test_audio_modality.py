"""The audio modality: wav written and read back at the run's rate, a folder of wavs with the class in each name,
NaN refused before anything is written, a 440 Hz tone at 44.1 kHz keeps its peak at 8 kHz, the exact scores read
the teacher's law, and mismatches named."""

import math
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile
import torch
from media_fixtures import audio_bytes

from potstill.core.codec import EncodedModality
from potstill.data.decode_audio import AudioDecodeOptions, AudioDecoder
from potstill.data.tones import TonesOptions, tone_clips
from potstill.modalities.audio import AudioModality, AudioOptions
from potstill.modalities.audio_codecs import SpectrogramCodec, SpectrogramCodecOptions

LAW = {"kind": "tones", "sample_rate": 8000, "length": 1024, "classes": [[16], [20], [16, 20, 24]],
       "harmonics": [1.0, 0.5]}


def teacher(shape=(1, 1024), law=LAW):
    return SimpleNamespace(sample_shape=shape, num_classes=3, metadata={"data": law})


def modality(**options) -> AudioModality:
    return AudioModality(AudioOptions(classifier=None, **options), teacher())


def clips(n=6, seed=0):
    return tone_clips(n, TonesOptions(**{k: v for k, v in LAW.items() if k != "kind"}).resolved(),
                      torch.Generator().manual_seed(seed))


def test_clips_decoded_once_score_as_their_spectrograms_do():
    """`evaluate_data` scores what `to_data_range` decoded (a benchmark times that decode) as `evaluate` scores
    the codec's samples."""
    x, labels = clips(8)
    encoded = EncodedModality(modality(), SpectrogramCodec(SpectrogramCodecOptions()))
    frames = encoded.codec.encode(x)
    assert encoded.evaluate_data(encoded.to_data_range(frames), labels) == encoded.evaluate(frames, labels)
    assert modality().evaluate_data(x, labels) == modality().evaluate(x, labels)


def test_wav_round_trip_at_the_teachers_rate(tmp_path):
    samples, labels = clips()
    path = modality().save_samples(samples, labels, tmp_path / "all.wav")
    audio, rate = soundfile.read(path, dtype="float32")
    assert rate == 8000 and audio.shape == (6 * 1024,)
    order = torch.argsort(labels, stable=True)
    expected = samples[order].reshape(-1).numpy()
    assert np.abs(audio - expected).max() <= 1 / 2**15 + 1e-7                # 16-bit PCM


def test_a_folder_holds_one_wav_per_clip_and_a_spectrogram_grid(tmp_path):
    samples, labels = clips(4)
    folder = modality().save_samples(samples, labels, tmp_path / "out")
    names = sorted(p.name for p in folder.iterdir())
    assert "spectrograms.png" in names and len([n for n in names if n.endswith(".wav")]) == 4
    assert all(f"_class{int(c)}.wav" in " ".join(names) for c in labels.unique())


def test_non_finite_audio_is_refused_before_writing(tmp_path):
    samples, labels = clips(3)
    samples[1, 0, 5] = float("nan")
    with pytest.raises(ValueError, match=r"NaN or Inf .*clip 1"):
        modality().save_samples(samples, labels, tmp_path / "bad.wav")
    assert not (tmp_path / "bad.wav").exists()
    with pytest.raises(ValueError, match=r"\.wav, \.png or a folder"):
        modality().save_samples(clips(2)[0], None, tmp_path / "x.mp3")


def test_the_exact_scores_read_the_teachers_law():
    samples, labels = clips(60)
    scores = modality().evaluate(samples, labels)
    assert scores["pitch_accuracy"] == 1.0 and scores["purity"] == pytest.approx(1.0, abs=1e-9)
    assert modality().headline_metric() == "impurity"


def test_a_440_hz_tone_at_44k1_resampled_to_8k_keeps_its_peak():
    rate, seconds = 44100, 0.5
    wave = (0.5 * np.sin(2 * math.pi * 440 * np.arange(int(rate * seconds)) / rate)).astype(np.float32)[:, None]
    decoded = AudioDecoder(AudioDecodeOptions(sample_rate=8000, length=4000, start="first"))(
        audio_bytes(wave, rate, "wav"), np.random.default_rng(0))
    peak = torch.fft.rfft(decoded[0].double()).abs().argmax().item() * 8000 / 4000
    assert peak == pytest.approx(440, abs=2)


@pytest.mark.parametrize(("make", "named"), [
    (lambda: AudioModality(AudioOptions(classifier=None, sample_rate=16000), teacher()), "modality.sample_rate"),
    (lambda: AudioModality(AudioOptions(classifier=None), teacher(shape=(1, 512))), "1024 long"),
    (lambda: AudioModality(AudioOptions(classifier=None), teacher(shape=(1, 8, 8))), "modality.kind"),
    (lambda: AudioModality(AudioOptions(classifier=None), teacher(law={})), "modality.sample_rate"),
])
def test_mismatches_are_named(make, named):
    with pytest.raises(ValueError, match=named):
        make()
