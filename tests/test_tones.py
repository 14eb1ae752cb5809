"""The tones law and its exact scores: real clips are pure and in pitch whatever their phases and gains; noise,
a wrong class and a detuned partial are caught; laws the scores could not judge are refused by name."""

import math

import pytest
import torch

from potstill.core.config import ConfigError
from potstill.data.tones import TonesOptions, class_bins, tone_clips, tones_stream
from potstill.modalities.audio_scores import clip_gains, power_spectrum, tone_scores

LAW = TonesOptions().resolved()


def draw(n=400, law=LAW, seed=0):
    return tone_clips(n, law, torch.Generator().manual_seed(seed))


def test_real_clips_are_pure_and_in_pitch_for_notes_and_chords():
    clips, labels = draw()
    assert clips.shape == (400, 1, 1024) and clips.abs().max() <= 1.0
    assert set(labels.tolist()) == set(range(len(LAW.classes)))
    scores = tone_scores(clips, labels, LAW)
    assert scores["pitch_accuracy"] == 1.0 and scores["pitch_accuracy_min"] == 1.0
    assert scores["purity"] == pytest.approx(1.0, abs=1e-9) and scores["purity_min"] == pytest.approx(1.0, abs=1e-9)


def test_the_spectrum_holds_only_the_class_bins_with_the_harmonic_amplitudes():
    law = TonesOptions(classes=[[10, 14]], harmonics=[1.0, 0.5], gain=[1.0, 1.0]).resolved()
    clips, _ = draw(4, law)
    magnitude = torch.fft.rfft(clips[:, 0].double(), dim=-1).abs() / (law.length / 2)
    assert class_bins([10, 14], [1.0, 0.5]) == [10, 14, 20, 28]
    expected = torch.zeros(law.length // 2 + 1, dtype=torch.float64)
    expected[[10, 14]], expected[[20, 28]] = 1.0 / 3.0, 0.5 / 3.0       # amplitudes / their sum (3.0)
    assert torch.allclose(magnitude, expected.expand_as(magnitude), atol=1e-6)     # float32 clips


def test_noise_wrong_class_and_detuning_are_scored_down():
    clips, labels = draw(200)
    noisy = clips + 0.1 * torch.randn(clips.shape, generator=torch.Generator().manual_seed(1))
    assert tone_scores(noisy, labels, LAW)["purity"] < 0.9
    wrong = tone_scores(clips, (labels + 1) % len(LAW.classes), LAW)
    assert wrong["pitch_accuracy"] < 0.3
    time = torch.arange(LAW.length) / LAW.length
    detuned = torch.cos(2 * math.pi * 16.5 * time)[None, None].expand(8, 1, -1)   # between bins 16 and 17
    assert tone_scores(detuned, torch.zeros(8, dtype=torch.long), LAW)["purity"] < 0.5


def test_partial_spread_is_zero_on_real_clips_and_about_a_half_under_a_gaussian_law():
    clips, labels = draw(400)
    assert tone_scores(clips, labels, LAW)["partial_spread"] < 1e-4
    spectrum = torch.fft.rfft(clips[:, 0].double(), dim=-1)
    generator = torch.Generator().manual_seed(2)
    rayleigh = spectrum.abs() * torch.randn(spectrum.shape, generator=generator, dtype=torch.complex128)
    gaussian = torch.fft.irfft(rayleigh, n=LAW.length, dim=-1)[:, None]      # same bins, independent amplitudes
    scores = tone_scores(gaussian, labels, LAW)
    assert 0.35 < scores["partial_spread"] < 0.65 and scores["purity"] == pytest.approx(1.0, abs=1e-9)


def test_partial_spread_leaves_out_partials_that_share_a_bin():
    law = TonesOptions(classes=[[10, 15]], harmonics=[1.0, 0.5, 0.25]).resolved()     # 3 x 10 = 2 x 15
    clips, labels = draw(4, law)
    louder = clips + 0.3 * torch.cos(2 * math.pi * 30 * torch.arange(law.length) / law.length)   # on the shared bin
    assert tone_scores(louder, labels, law)["partial_spread"] < 1e-4
    lone_tone = TonesOptions(classes=[[10]], harmonics=[1.0]).resolved()
    assert "partial_spread" not in tone_scores(*draw(4, lone_tone), lone_tone)


def test_clip_gains_read_back_the_gain_and_one_loudness_for_all_is_far_from_the_gain_law():
    fixed = TonesOptions(gain=[0.7, 0.7]).resolved()
    clips, labels = draw(64, fixed)
    assert torch.allclose(clip_gains(power_spectrum(clips), labels, fixed), torch.tensor(0.7, dtype=torch.float64),
                          atol=1e-5)
    clips, labels = draw(2000)
    assert tone_scores(clips, labels, LAW)["gain_distance"] < 0.01
    rms = clips.pow(2).mean((1, 2), keepdim=True).sqrt()
    level = tone_scores(clips / rms * 0.3, labels, LAW)      # every clip at one loudness: no gain law left
    assert level["gain_distance"] > 0.1 and level["pitch_accuracy"] == 1.0


def test_unconditional_clips_are_scored_against_their_best_fitting_class():
    clips, _ = draw(100)
    scores = tone_scores(clips, None, LAW)
    assert scores["pitch_accuracy"] == 1.0 and scores["purity"] == pytest.approx(1.0, abs=1e-9)


def test_the_stream_resumes_exactly():
    stream = tones_stream(LAW)
    stream.next(5)
    state = stream.state_dict()
    after = stream.next(7)
    again = tones_stream(LAW)
    again.load_state_dict(state)
    resumed = again.next(7)
    assert torch.equal(after[0], resumed[0]) and torch.equal(after[1], resumed[1])


def test_power_spectrum_sums_channels():
    clips, _ = draw(3, TonesOptions(channels=2).resolved())
    assert torch.allclose(power_spectrum(clips), 2 * power_spectrum(clips[:, :1]))


@pytest.mark.parametrize(("change", "named"), [
    ({"classes": [[300]]}, "real_data.classes[0]"),                          # partials past Nyquist
    ({"classes": [[0]]}, "real_data.classes[0]"),
    ({"classes": [[20, 40]], "harmonics": [1.0, 0.9]}, "real_data.classes[0]"),    # bin 80 can outshine bin 40
    ({"classes": [[16], [16]]}, "real_data.classes"),
    ({"harmonics": []}, "real_data.harmonics"),
    ({"gain": [0.0, 1.0]}, "real_data.gain"),
    ({"length": 0}, "real_data.length"),
])
def test_laws_the_scores_cannot_judge_are_refused_by_key(change, named):
    with pytest.raises(ConfigError, match=named.replace("[", r"\[").replace("]", r"\]")):
        TonesOptions(**change).resolved()
