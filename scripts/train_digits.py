"""Train the embedded digits teacher (a class-conditional DiT with EDM preconditioning) and the digits
classifier whose features define the Frechet digits distance; writes both into data/embedded/.

    python scripts/train_digits.py [--teacher-steps 8000] [--classifier-epochs 40]
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from potstill.backbones.digits_classifier import DigitsClassifier
from potstill.backbones.dit import DiT, DiTOptions
from potstill.core.denoiser import Denoiser
from potstill.core.ema import EMA
from potstill.core.schedules import EDMOptions, EDMSchedule
from potstill.data.digits import load_digits_tensors

OUT = Path(__file__).resolve().parent.parent / "data" / "embedded"
TEACHER_DIT = DiTOptions(input_size=8, patch_size=2, in_channels=1, hidden_size=64, depth=4, num_heads=4,
                         mlp_ratio=4.0, class_dropout_prob=0.1, num_classes=10, learn_sigma=False)


def train_teacher(steps: int, batch: int, seed: int) -> None:
    torch.manual_seed(seed)
    images, labels = load_digits_tensors()
    sigma_data = float(images.std())
    schedule = EDMSchedule(EDMOptions(sigma_data=sigma_data))
    denoiser = Denoiser(DiT(TEACHER_DIT), schedule, "edm", sigma_data, (1, 8, 8), 10)
    ema = EMA(denoiser, 0.999)
    optimizer = torch.optim.AdamW(denoiser.parameters(), lr=1e-3, weight_decay=0.0)
    lr_at = lambda step: min(1.0, step / 500) * (0.1 + 0.9 * (1 - step / steps))  # noqa: E731
    start = time.perf_counter()
    for step in range(steps):
        index = torch.randint(len(images), (batch,))
        x0, y = images[index], labels[index].clone()
        y[torch.rand(batch) < TEACHER_DIT.class_dropout_prob] = TEACHER_DIT.num_classes
        loss = denoiser.dsm_loss(x0, y).mean()
        for group in optimizer.param_groups:
            group["lr"] = 1e-3 * lr_at(step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(denoiser.parameters(), 1.0)
        optimizer.step()
        ema.update(denoiser)
        if step % 500 == 0:
            print(f"teacher step {step} loss {loss.item():.4f} ({time.perf_counter() - start:.0f} s)", flush=True)
    metadata = {"dit": asdict(TEACHER_DIT), "schedule": "edm", "schedule_options": {"sigma_data": sigma_data},
                "prediction": "edm", "sigma_data": sigma_data, "trained_steps": steps}
    state = {k: v.contiguous() for k, v in ema.model.backbone.state_dict().items()}
    save_file(state, OUT / "digits_teacher.safetensors", metadata={"potstill": json.dumps(metadata)})


def train_classifier(epochs: int, seed: int) -> None:
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
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, OUT / "digits_classifier.safetensors")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--teacher-steps", type=int, default=8000)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--classifier-epochs", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", choices=["teacher", "classifier"], default=None)
    args = parser.parse_args()
    torch.set_num_threads(2)
    if args.only != "teacher":
        train_classifier(args.classifier_epochs, args.seed)
    if args.only != "classifier":
        train_teacher(args.teacher_steps, args.batch, args.seed)


if __name__ == "__main__":
    main()
