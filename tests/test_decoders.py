"""Decoded media match their sources: lossless images and audio exactly, lossy codecs within tolerance;
clips sample the right frames; conditions and stored tensors are read from their fields."""

import io
import json

import numpy as np
import pytest
import torch
import torchaudio.functional as AF
from media_fixtures import audio_bytes, image_bytes, mp4_bytes, pattern_frames, tone
from safetensors.torch import save as save_safetensors

from potstill.data.decode_audio import AudioDecodeOptions, AudioDecoder
from potstill.data.decode_image import ImageDecodeOptions, ImageDecoder
from potstill.data.decode_video import VideoDecodeOptions, VideoDecoder
from potstill.data.fields import BadSample, RefusedSample
from potstill.data.sample_decoder import SampleDecoder, TensorDecoder

RNG = np.random.default_rng(0)


def image(size, channels, **options) -> ImageDecoder:
    return ImageDecoder(ImageDecodeOptions(**options), size, channels)


def video(size, **options) -> VideoDecoder:
    return VideoDecoder(VideoDecodeOptions(**options), size, 3)


def audio(**options) -> AudioDecoder:
    return AudioDecoder(AudioDecodeOptions(**options))


def unit(pixels: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(pixels.astype(np.float32)) / 127.5 - 1


@pytest.mark.parametrize(("extension", "tolerance"), [("png", 0.0), ("jpg", 0.03), ("webp", 0.05)])
def test_images_match_their_source(extension, tolerance):
    pixels = pattern_frames(1, 20, 28, 3)[0]
    decoded = image((20, 28), 3, resize="none")(image_bytes(pixels, extension), RNG)
    expected = unit(pixels).permute(2, 0, 1)
    assert decoded.shape == (3, 20, 28)
    assert (decoded - expected).abs().mean() <= tolerance


def test_image_resize_and_crop():
    pixels = pattern_frames(1, 20, 40, 1)[0]
    data = image_bytes(pixels, "png")
    center = image((10, 10), 1)(data, RNG)
    assert center.shape == (1, 10, 10)
    crops = {tuple(image((20, 20), 3, resize="none", crop="random")(data, np.random.default_rng(s))[0, 0, :2]
                   .tolist()) for s in range(6)}
    assert len(crops) > 1                                            # random crops move
    whole = unit(pixels).permute(2, 0, 1)
    left = image((20, 20), 3, resize="none", crop="center")(data, RNG)
    torch.testing.assert_close(left, whole[:, :, 10:30])             # the centre window, exactly
    with pytest.raises(BadSample, match="undecodable"):
        image((8, 8), 3)(b"not an image", RNG)


@pytest.mark.parametrize("size", [(32, 48), (64, 64)])           # 48 wide: decord pads its rows
def test_video_frames_match_their_source(size):
    frames = pattern_frames(12, *size, seed=2)
    data = mp4_bytes(frames, fps=10)
    clip = video(size, frames=12, start="first", resize="none")(data, RNG)
    expected = unit(frames).permute(3, 0, 1, 2)                      # [C, T, H, W]
    assert clip.shape == (3, 12, *size)
    assert (clip - expected).abs().mean() < 0.03
    strided = video(size, frames=4, stride=3, start="first", resize="none")(data, RNG)
    torch.testing.assert_close(strided, clip[:, ::3], rtol=0, atol=0)
    at_fps = video(size, frames=6, fps=5.0, start="first", resize="none")(data, RNG)
    torch.testing.assert_close(at_fps, clip[:, ::2], rtol=0, atol=0)  # 10 fps source sampled at 5 fps
    small = video((16, 16), frames=2)(data, RNG)
    assert small.shape == (3, 2, 16, 16) and small.abs().max() <= 1
    with pytest.raises(BadSample, match="too_short: video has 12 frames, a clip needs 23"):
        video(size, frames=12, stride=2)(data, RNG)
    with pytest.raises(BadSample, match="undecodable"):
        video(size, frames=2)(data[: len(data) // 4], RNG)


@pytest.mark.parametrize("extension", ["wav", "flac"])
def test_lossless_audio_matches_its_source(extension):
    wave = tone(0.25, 16000, 2, seed=1)
    decoder = audio(sample_rate=16000, channels=2, length=4000, start="first")
    decoded = decoder(audio_bytes(wave, 16000, extension), RNG)
    torch.testing.assert_close(decoded, torch.from_numpy(wave.T), rtol=0, atol=1 / 2**15)
    mono = audio(sample_rate=16000, channels=1, length=4000, start="first")(audio_bytes(wave, 16000, extension),
                                                                                 RNG)
    torch.testing.assert_close(mono[0], torch.from_numpy(wave.mean(axis=1)), rtol=0, atol=1 / 2**15)


def test_audio_resample_pad_and_channels():
    wave = tone(0.25, 22050, 1, seed=3)
    decoded = audio(sample_rate=16000, channels=2, length=6000, start="first")(audio_bytes(wave, 22050, "wav"),
                                                                                    RNG)
    expected = AF.resample(torch.from_numpy(wave.T), 22050, 16000)
    assert decoded.shape == (2, 6000)
    torch.testing.assert_close(decoded[:, :4000], expected.expand(2, -1)[:, :4000], rtol=0, atol=2e-4)
    assert decoded[:, expected.shape[1]:].abs().max() == 0              # zero padding past the clip's end
    with pytest.raises(BadSample, match="too_short"):
        audio(length=6000, short="skip")(audio_bytes(tone(0.1, 16000, 1, 0), 16000, "wav"), RNG)
    with pytest.raises(RefusedSample, match=r"real_data\.audio\.short: error"):
        audio(length=6000, short="error")(audio_bytes(tone(0.1, 16000, 1, 0), 16000, "wav"), RNG)
    with pytest.raises(RefusedSample, match=r"real_data\.audio\.resample: false, .* 22050 Hz"):
        audio(sample_rate=16000, resample=False)(audio_bytes(wave, 22050, "wav"), RNG)
    with pytest.raises(RefusedSample, match=r"real_data\.audio\.channels: 3"):
        audio(channels=3)(audio_bytes(tone(0.1, 16000, 2, 0), 16000, "wav"), RNG)


def test_mp3_keeps_the_tone():
    wave = tone(0.5, 16000, 1, seed=5)                                 # 420 Hz
    decoded = audio(sample_rate=16000, length=8000, start="middle")(audio_bytes(wave, 16000, "mp3"), RNG)
    spectrum = torch.fft.rfft(decoded[0]).abs()
    assert spectrum.argmax().item() * 16000 / 8000 == pytest.approx(420, abs=4)
    assert decoded.pow(2).mean().sqrt().item() == pytest.approx(0.5 / 2**0.5, rel=0.1)


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def pt_bytes(tensor: torch.Tensor) -> bytes:
    buffer = io.BytesIO()
    torch.save(tensor, buffer)
    return buffer.getvalue()


def test_stored_tensors_and_conditions():
    latent = torch.randn(4, 8, 8)
    embedding = np.arange(6, dtype=np.float32)
    for data in (npy_bytes(latent.numpy()), pt_bytes(latent), save_safetensors({"latent": latent})):
        assert torch.equal(TensorDecoder()(data, RNG), latent)
    sample = {"__key__": "k", "latent.npy": npy_bytes(latent.numpy()), "cls": b"7", "txt": b" a cat \n",
              "json": json.dumps({"meta": {"label": 3, "caption": "a dog"}}).encode(),
              "text_emb.npy": npy_bytes(embedding)}
    reads = {("label", "cls"): 7, ("label", "json:meta.label"): 3, ("caption", "txt"): "a cat",
             ("caption", "json:meta.caption"): "a dog"}
    for (condition, name), value in reads.items():
        x, cond = SampleDecoder(TensorDecoder(), ["latent.npy"], condition, name)(sample, RNG)
        assert torch.equal(x, latent) and cond == value
    _, cond = SampleDecoder(TensorDecoder(), ["latent.npy"], "embedding", "text_emb.npy")(sample, RNG)
    assert torch.equal(cond, torch.from_numpy(embedding))
    with pytest.raises(BadSample, match="missing_field"):
        SampleDecoder(TensorDecoder(), ["latent.npy"], "label", "json:meta.other")(sample, RNG)
    with pytest.raises(BadSample, match="bad_label"):
        SampleDecoder(TensorDecoder(), ["latent.npy"], "label", "txt")(sample, RNG)
