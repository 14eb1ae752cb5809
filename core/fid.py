"""FID of a run's student against real images from shards (Heusel et al. 2017), computed by torchmetrics'
`FrechetInceptionDistance` with the Inception network's weights from a local file (torch-fidelity's
`pt_inception-2015-12-05` state dict; nothing downloads). Samples and real images become 8-bit RGB: grey images are
repeated over three channels, the network resizes them to 299 x 299 itself."""

from __future__ import annotations

from pathlib import Path

import torch
from einops import repeat
from torchmetrics.image.fid import FrechetInceptionDistance

from potstill.core.tensors import map_tensors
from potstill.data.webdataset_source import WebDatasetOptions, open_stream

SEED = 0      # the student's input draw (and the real stream's, which is read unshuffled)


def to_uint8_rgb(images: torch.Tensor, data_range: tuple[float, float]) -> torch.Tensor:
    """[N, 1 or 3, H, W] images in `data_range` as uint8 RGB."""
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"FID scores images [N, 1 or 3, H, W]; these samples are {list(images.shape)}")
    low, high = data_range
    pixels = ((images.float().clamp(low, high) - low) / (high - low) * 255).round().to(torch.uint8)
    return repeat(pixels, "n 1 h w -> n c h w", c=3) if pixels.shape[1] == 1 else pixels


def frechet_inception_distance(fake: torch.Tensor, real: torch.Tensor, inception: str | Path,
                               batch: int = 64) -> float:
    """FID between two sets of uint8 RGB images, with the Inception weights in the file `inception`."""
    path = Path(inception).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"--inception: {path} does not exist (torch-fidelity's pt_inception weights file)")
    metric = FrechetInceptionDistance(feature=2048, feature_extractor_weights_path=str(path))
    for images, is_real in ((fake, False), (real, True)):
        for chunk in images.split(batch):
            metric.update(chunk, real=is_real)
    return float(metric.compute())


def real_images(shards: str, n: int, sample_shape: tuple[int, ...]) -> torch.Tensor:
    """Up to `n` images read once from `shards` (in the data range, the modality's size and channels), unshuffled."""
    options = WebDatasetOptions(shards=shards, workers=0, shuffle_shards=False, shuffle_buffer=1)
    stream = open_stream(options, min(n, 256), SEED, sample_shape, epochs=1)
    parts, have = [], 0
    for batch in stream.batches():
        parts.append(batch["x"])
        have += len(batch["x"])
        if have >= n:
            break
    if not parts:
        raise ValueError(f"--fid-real: {shards} holds no image the decoder could read")
    return torch.cat(parts)[:n]


@torch.no_grad()
def student_images(distiller, n: int, batch: int, seed: int = SEED) -> torch.Tensor:
    """n samples of the run's EMA student, in the data range, from inputs drawn with `seed`."""
    noise, cond = distiller.draw_inputs(n, torch.Generator().manual_seed(seed))
    student = distiller.ema.model.eval()
    parts = [student.sample(noise[i:i + batch], map_tensors(cond, lambda c, i=i: c[i:i + batch]))
             for i in range(0, n, batch)]
    return distiller.modality.to_data_range(torch.cat(parts).float().cpu())


def run_fid(distiller, shards: str, inception: str | Path, n: int, batch: int) -> dict:
    """The `fid` section of a run's report: the student's n samples against n real images from `shards`."""
    modality = distiller.modality
    if modality.data_range is None:
        raise ValueError("--fid-real: FID scores images; this run's modality has no image range")
    fake = to_uint8_rgb(student_images(distiller, n, batch), modality.data_range)
    real = to_uint8_rgb(real_images(shards, n, tuple(modality.data_shape)), modality.data_range)
    return {"value": frechet_inception_distance(fake, real, inception), "n_fake": len(fake), "n_real": len(real),
            "real": shards, "inception": str(inception)}
