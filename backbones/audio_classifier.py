"""A small log-mel CNN whose pooled features define the toy Frechet audio distance (FAD-toy). Clips are resampled
to 8 kHz, turned into 64 log-mel bands, convolved over time and averaged over it, so one set of weights scores
clips of any rate and length. It is trained (scripts/train_classifiers.py) to tell which mel bands hold a
fundamental of random notes and chords, so its features see pitch, harmonics and noise rather than one class set."""

from __future__ import annotations

import torch
import torchaudio.functional as AF
from torch import nn
from torchaudio.transforms import MelSpectrogram

RATE = 8000
MELS = 64
FLOOR_DB = 60.0     # each clip's mel energies floored 60 dB below its loudest (pure tones have empty bands)


class AudioClassifier(nn.Module):
    """([B, C, T] in [-1, 1], sample rate) -> (logits [B, MELS]: a fundamental in each mel band, features [B, 64])."""

    feature_dim = 64

    def __init__(self) -> None:
        super().__init__()
        self.mel = MelSpectrogram(RATE, n_fft=256, hop_length=64, n_mels=MELS, f_min=0.0, f_max=RATE / 2)
        self.trunk = nn.Sequential(
            nn.Conv1d(MELS, 128, 3, padding=1), nn.SiLU(),
            nn.Conv1d(128, 128, 3, padding=1), nn.SiLU(),
            nn.Conv1d(128, self.feature_dim, 3, padding=1), nn.SiLU(),
        )
        self.head = nn.Linear(self.feature_dim, MELS)

    def log_mel(self, clips: torch.Tensor, sample_rate: int) -> torch.Tensor:
        """[B, MELS, frames] mel energies of the channel mean at 8 kHz in units of 10 dB, floored FLOOR_DB below the
        clip's loudest band (without the floor, a real tone's empty bands sit at log(0) and the faintest noise moves
        them further than any audible change)."""
        mono = clips.float().mean(1)
        if sample_rate != RATE:
            mono = AF.resample(mono, sample_rate, RATE)
        level = torch.log10(self.mel(mono) + 1e-12)
        return torch.maximum(level, level.amax((1, 2), keepdim=True) - FLOOR_DB / 10)

    def forward(self, clips: torch.Tensor, sample_rate: int) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.trunk(self.log_mel(clips, sample_rate)).mean(2)
        return self.head(features), features
