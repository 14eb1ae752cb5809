"""Train the scoring classifiers shipped in data/embedded/: the digits classifier (Frechet digits distance of the
image modality), the moving-digits video classifier (toy Frechet video distance of the video modality) and the
tones audio classifier (FAD-toy of the audio modality).

    python scripts/train_classifiers.py [--only digits|video|audio] [--digits-epochs 40] [--video-steps 1000]
        [--audio-steps 3000]
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from potstill.backbones.audio_classifier import MELS, RATE, AudioClassifier
from potstill.backbones.digits_classifier import DigitsClassifier
from potstill.backbones.video_classifier import VideoClassifier
from potstill.data.digits import load_digits_tensors
from potstill.data.moving_digits import moving_digit_clips
from potstill.modalities.video_scores import search_shifts

OUT = Path(__file__).resolve().parent.parent / "data" / "embedded"
VIDEO_CANVAS = (10, 16)          # inclusive ranges the video classifier trains on
VIDEO_FRAMES = (6, 16)
VIDEO_HELD_OUT = [(12, 8), (10, 6), (16, 16), (12, 48)]     # (canvas, frames) of the held-out check


def save_weights(model: torch.nn.Module, name: str) -> None:
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, OUT / f"{name}.safetensors")


def train_digits_classifier(epochs: int, seed: int) -> None:
    torch.manual_seed(seed)
    images, labels = load_digits_tensors()
    model = DigitsClassifier()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    for epoch in range(epochs):
        order = torch.randperm(len(images))
        for start in range(0, len(images), 128):
            index = order[start : start + 128]
            x = images[index]
            shifts = torch.randint(-1, 2, (2,))
            x = torch.roll(x, shifts=(int(shifts[0]), int(shifts[1])), dims=(2, 3))
            x = (x + 0.1 * torch.randn_like(x)).clamp(-1, 1)
            loss = F.cross_entropy(model(x)[0], labels[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            accuracy = (model(images)[0].argmax(1) == labels).float().mean()
        print(f"classifier epoch {epoch} loss {loss.item():.4f} train accuracy {accuracy:.4f}", flush=True)
    save_weights(model, "digits_classifier")


def random_clips(batch: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of clips at one random canvas and frame count, moving at any velocity with |dy|, |dx| <= 2."""
    canvas = int(torch.randint(VIDEO_CANVAS[0], VIDEO_CANVAS[1] + 1, (), generator=generator))
    frames = int(torch.randint(VIDEO_FRAMES[0], VIDEO_FRAMES[1] + 1, (), generator=generator))
    return moving_digit_clips(batch, canvas, frames, [list(v) for v in search_shifts()], generator)


@torch.no_grad()
def held_out_accuracy(model: VideoClassifier, seed: int, n: int = 500) -> dict[tuple[int, int], float]:
    """Accuracy on fresh clips (another seed) at each VIDEO_HELD_OUT (canvas, frames)."""
    model.eval()
    generator = torch.Generator().manual_seed(seed + 10_000)
    accuracy = {}
    for canvas, frames in VIDEO_HELD_OUT:
        clips, labels = moving_digit_clips(n, canvas, frames, [list(v) for v in search_shifts()], generator)
        accuracy[canvas, frames] = float((model(clips)[0].argmax(1) == labels).float().mean())
    model.train()
    return accuracy


def fit(model: torch.nn.Module, steps: int, lr: float, batch_loss, name: str) -> None:
    """AdamW with a one-cycle learning rate for `steps` steps of `batch_loss()`, the loss printed every 250."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.1)
    begin = time.perf_counter()
    for step in range(steps):
        loss = batch_loss()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 250 == 0 or step == steps - 1:
            print(f"{name} step {step} loss {loss.item():.4f} ({time.perf_counter() - begin:.0f} s)", flush=True)


def train_video_classifier(steps: int, batch: int, seed: int) -> None:
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = VideoClassifier()

    def batch_loss() -> torch.Tensor:
        clips, labels = random_clips(batch, generator)
        clips = (clips + 0.1 * torch.randn(clips.shape, generator=generator)).clamp(-1, 1)
        return F.cross_entropy(model(clips)[0], labels)

    fit(model, steps, 3e-3, batch_loss, "video classifier")
    accuracy = held_out_accuracy(model, seed)
    print("video classifier held-out accuracy (canvas, frames): "
          + ", ".join(f"{key}: {value:.4f}" for key, value in accuracy.items()), flush=True)
    save_weights(model, "moving_digits_classifier")


def random_tones(batch: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """8 kHz clips of one random length, each 1-3 fundamentals in 60-1000 Hz (any frequency, not only FFT bins) with
    1-4 harmonics of random amplitude, random phases, gain and added noise; targets: the mel bands of the
    fundamentals (multi-hot [batch, MELS]), so the features must see pitch, harmonics and noise."""
    length = int(torch.randint(512, 4097, (), generator=generator))
    time_axis = torch.arange(length, dtype=torch.float64) / RATE
    centres = AudioClassifier().mel.mel_scale.fb.argmax(0).double() * RATE / 256     # each band's peak, in Hz
    clips = torch.zeros(batch, length, dtype=torch.float64)
    targets = torch.zeros(batch, MELS)
    for i in range(batch):
        count = int(torch.randint(1, 4, (), generator=generator))
        fundamentals = 60 * (1000 / 60) ** torch.rand(count, generator=generator, dtype=torch.float64)
        harmonics = torch.rand(int(torch.randint(1, 5, (), generator=generator)), generator=generator,
                               dtype=torch.float64).sort(descending=True).values
        harmonics[0] = 1.0
        for f in fundamentals:
            for k, a in enumerate(harmonics, start=1):
                if k * f < RATE / 2:
                    phase = 2 * math.pi * torch.rand((), generator=generator, dtype=torch.float64)
                    clips[i] += a * torch.cos(2 * math.pi * k * f * time_axis + phase)
            targets[i, int((centres - f).abs().argmin())] = 1.0
    gain = 0.2 + 0.8 * torch.rand(batch, 1, generator=generator, dtype=torch.float64)
    clips = gain * clips / clips.abs().amax(1, keepdim=True)
    noise = 0.3 * torch.rand(batch, 1, generator=generator, dtype=torch.float64) ** 2
    clips = clips + noise * torch.randn(clips.shape, generator=generator, dtype=torch.float64)
    return clips.float()[:, None].clamp(-1, 1), targets


def train_audio_classifier(steps: int, batch: int, seed: int) -> None:
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = AudioClassifier()

    def batch_loss() -> torch.Tensor:
        clips, targets = random_tones(batch, generator)
        return F.binary_cross_entropy_with_logits(model(clips, RATE)[0], targets)

    fit(model, steps, 2e-3, batch_loss, "audio classifier")
    with torch.no_grad():
        clips, targets = random_tones(500, torch.Generator().manual_seed(seed + 10_000))
        found = model.eval()(clips, RATE)[0].topk(3, dim=1).indices
        hits = targets.gather(1, found[:, :1]).mean()
    print(f"audio classifier held-out: the top band holds a fundamental in {float(hits):.4f} of clips", flush=True)
    save_weights(model, "tones_classifier")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=["digits", "video", "audio"], default=None)
    parser.add_argument("--digits-epochs", type=int, default=40)
    parser.add_argument("--video-steps", type=int, default=1000)
    parser.add_argument("--video-batch", type=int, default=64)
    parser.add_argument("--audio-steps", type=int, default=3000)
    parser.add_argument("--audio-batch", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(2)
    if args.only in (None, "digits"):
        train_digits_classifier(args.digits_epochs, args.seed)
    if args.only in (None, "video"):
        train_video_classifier(args.video_steps, args.video_batch, args.seed)
    if args.only in (None, "audio"):
        train_audio_classifier(args.audio_steps, args.audio_batch, args.seed)


if __name__ == "__main__":
    main()
