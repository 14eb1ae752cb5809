"""Train the `autoencoder` audio codec on a teacher config's real data and write its weights, so that teacher can
then be trained on the latents (`--set codec.kind=autoencoder codec.path=FILE`).

    python scripts/train_audio_codec.py configs/audio/tones_teacher_waveform.yaml --out codec.safetensors [--steps 2000]
        [--batch 32] [--lr 2e-3] [--latent-channels 8] [--hidden 64] [--hop 8] [--set KEY=VALUE ...]

Prints the round trip's error, and its pitch accuracy and purity when the data are tones."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from safetensors.torch import save_file
from train_classifiers import fit

from potstill.backbones.audio_autoencoder import AudioAutoencoder, AudioAutoencoderOptions
from potstill.core import registry as reg
from potstill.core.engine import PlainEngine, PlainOptions
from potstill.core.teacher_config import load_teacher_config
from potstill.core.teacher_training import DataContext
from potstill.modalities.audio_scores import tone_scores


def train_audio_codec(config_path: Path, out: Path, steps: int, batch: int, lr: float, latent_channels: int,
                      hidden: int, hop: int, overrides: list[str], seed: int = 0) -> dict[str, float]:
    """Fit the autoencoder (as many channels as the clips) to the config's real clips (the classifiers' AdamW loop),
    write it to `out` atomically and return its round-trip scores on a fresh batch."""
    torch.manual_seed(seed)
    config = load_teacher_config(config_path, overrides)
    entry = reg.DATASETS.get(config.real_data.kind, "real_data.kind")
    data = entry.builder(config.real_data.options, DataContext(config, PlainEngine(PlainOptions("cpu"))))
    channels = int(data.next(1)[0].shape[1])
    model = AudioAutoencoder(AudioAutoencoderOptions(channels, latent_channels, hidden, hop))

    def batch_loss() -> torch.Tensor:
        clips, _ = data.next(batch)
        return model.reconstruction_loss(clips.float())

    fit(model, steps, lr, batch_loss, "codec")
    model.eval()
    clips, labels = data.next(256)
    with torch.no_grad():
        decoded = model.decode(model.encode(clips.float()))
    scores = {"relative_error": float((decoded - clips).square().sum() / clips.square().sum())}
    law = getattr(data, "options", None)
    if config.real_data.kind == "tones" and law is not None:
        scores |= tone_scores(decoded, labels, law)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp)
    tmp.replace(out)
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", type=Path, help="a train-teacher config; its real_data section is trained on")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--latent-channels", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--hop", type=int, default=8)
    parser.add_argument("--set", nargs="*", default=[], dest="overrides", metavar="KEY=VALUE")
    args = parser.parse_args()
    scores = train_audio_codec(args.config, args.out, args.steps, args.batch, args.lr, args.latent_channels,
                               args.hidden, args.hop, args.overrides)
    print(f"wrote {args.out}; round trip: " + ", ".join(f"{k} {v:.4f}" for k, v in scores.items()))


if __name__ == "__main__":
    main()
