"""Samples per second of each webdataset pipeline (images, video clips, audio clips, and the packed
digits the demo streams) with 0, 1 and 2 DataLoader workers, against the time of one distillation step
at the same batch size (the digits DMD2 step of configs/image/digits_dmd2.yaml): a loader keeps up when
it delivers a batch faster than a step takes. For the digits it also times the training step itself
with real data streamed from shards against the same step with the digits held in memory.

    python benchmarks/data_throughput.py [--batch 64] [--batches 12]

Writes benchmarks/results/data_throughput.json and .md (`--name` another stem).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import av
import numpy as np
import soundfile
import torch
from PIL import Image

import potstill  # noqa: F401  (registers components)
from potstill.core.config import from_dict, load_config
from potstill.core.distiller import Distiller
from potstill.data.digits import pack_digits
from potstill.data.pack import pack
from potstill.data.webdataset_source import WebDatasetOptions, open_stream

RESULTS = Path(__file__).resolve().parent / "results"
DIGITS_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "image" / "digits_dmd2.yaml"
WORKERS = (0, 1, 2)
CORPORA = {   # what each corpus holds and how the pipeline decodes it
    "image": {"count": 512, "decode": {"media": "image", "image": {"size": 64, "channels": 3}},
              "source": "256x256 JPEG (q 90) -> 64x64 RGB"},
    "video": {"count": 96, "decode": {"media": "video", "video": {"frames": 16, "stride": 2, "size": 64}},
              "source": "128x128 mp4 (H.264), 48 frames at 24 fps -> 16 frames (stride 2) at 64x64"},
    "audio": {"count": 256, "decode": {"media": "audio", "audio": {"sample_rate": 16000, "length": 32000}},
              "source": "4 s 44.1 kHz stereo wav -> 2 s 16 kHz mono"},
}


def smooth_frames(count: int, size: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    phase = rng.uniform(0, 255, 3)
    return np.stack([np.stack([(xx + phase[0] + 3 * t) % 256, (yy + phase[1]) % 256,
                               np.full((size, size), (phase[2] + 5 * t) % 256)], -1) for t in range(count)]
                    ).astype(np.uint8)


def write_video(path: Path, frames: np.ndarray) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=24)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def make_corpus(kind: str, folder: Path) -> None:
    folder.mkdir(parents=True)
    for index in range(CORPORA[kind]["count"]):
        stem = folder / f"{kind}-{index:05d}"
        if kind == "image":
            noise = np.random.default_rng(index).integers(0, 40, (256, 256, 3))
            Image.fromarray((smooth_frames(1, 256, index)[0] + noise).astype(np.uint8)).save(
                stem.with_suffix(".jpg"), quality=90)
        elif kind == "video":
            write_video(stem.with_suffix(".mp4"), smooth_frames(48, 128, index))
        else:
            t = np.arange(4 * 44100) / 44100
            wave = np.stack([np.sin(2 * np.pi * (200 + index) * t), np.sin(2 * np.pi * (300 + index) * t)], 1)
            soundfile.write(stem.with_suffix(".wav"), (0.4 * wave).astype(np.float32), 44100, subtype="PCM_16")
        stem.with_suffix(".cls").write_text(str(index % 10))


def loader_rate(options: WebDatasetOptions, batch: int, batches: int) -> dict:
    """Samples per second after the first batch (worker start-up excluded, reported apart)."""
    stream = open_stream(options, batch, seed=0)
    start = time.perf_counter()
    stream.next(batch)
    first = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(batches):
        stream.next(batch)
    seconds = time.perf_counter() - start
    return {"samples_per_sec": batch * batches / seconds, "sec_per_batch": seconds / batches, "first_batch_sec": first}


def digits_step_seconds(batch: int, steps: int, real_data: list[str]) -> dict:
    """Median seconds per step of the demo's DMD2 run (critic every step, generator every 5th) after 2 warm-up
    steps, and the mean seconds per step the loop waited for real data."""
    overrides = [f"train.batch_size={batch}", "train.progress=false", *real_data]
    distiller = Distiller(load_config(DIGITS_CONFIG, overrides))
    times = []
    for step in range(steps + 2):
        if step == 2:
            distiller.real_data.metrics()          # restart the wait counter after the warm-up
        start = time.perf_counter()
        distiller.train_step()
        times.append(time.perf_counter() - start)
    wait = distiller.real_data.metrics().get("data_wait_sec", 0.0) / steps
    return {"sec_per_step": statistics.median(times[2:]), "data_wait_sec_per_step": wait}


def markdown(results: dict) -> str:
    step = results["training"]["in memory"]["sec_per_step"]
    lines = [f"Batch {results['batch']}; one digits DMD2 step (in-memory real data) takes {step:.3f} s "
             f"({results['batch'] / step:.0f} samples/s). Ratio = loader time per batch / step time: below 1 the "
             "loader keeps up.", "",
             "| corpus | decoded as | workers | samples/s | s per batch | ratio to a step | first batch (s) |",
             "|---|---|---|---|---|---|---|"]
    for kind, rows in results["loaders"].items():
        for workers, row in rows.items():
            lines.append(f"| {kind} | {results['sources'][kind]} | {workers} | {row['samples_per_sec']:.0f} | "
                         f"{row['sec_per_batch']:.4f} | {row['sec_per_batch'] / step:.3f} | "
                         f"{row['first_batch_sec']:.2f} |")
    lines += ["", "Digits DMD2 training step with real digits streamed from shards vs held in memory:", "",
              "| real data | s/step (median) | ratio to in memory | waited for data (s/step) |", "|---|---|---|---|"]
    for name, row in results["training"].items():
        lines.append(f"| {name} | {row['sec_per_step']:.4f} | {row['sec_per_step'] / step:.3f} | "
                     f"{row['data_wait_sec_per_step']:.4f} |")
    lines += ["", f"{results['machine']}, torch {results['torch']}, {results['cores']} cores: workers share the cores "
              "with the training process, so on this machine more workers also slow the step."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--batches", type=int, default=12)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--name", default="data_throughput", help="results file stem under benchmarks/results/")
    args = parser.parse_args()
    torch.set_num_threads(2)
    results = {"machine": platform.platform(), "torch": torch.__version__, "cores": torch.get_num_threads(),
               "batch": args.batch, "sources": {}, "loaders": {}, "training": {}}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        digits = pack_digits(str(root / "digits" / "digits-%06d.tar")).pattern
        corpora = {"digits": (digits, {"media": "image", "condition": "label", "image": {"size": 8, "channels": 1}})}
        results["sources"]["digits"] = "8x8 png -> [1, 8, 8]"
        for kind, spec in CORPORA.items():
            make_corpus(kind, root / kind)
            shards = pack(root / kind, str(root / f"{kind}-shards" / "part-%06d.tar"),
                          maxcount=spec["count"] // 8)
            corpora[kind] = (shards.pattern, {**spec["decode"], "condition": "label"})
            results["sources"][kind] = spec["source"]
        results["training"]["in memory"] = digits_step_seconds(args.batch, args.steps, ["real_data=digits"])
        for kind, (pattern, decode) in corpora.items():
            results["loaders"][kind] = {}
            for workers in WORKERS:
                options = from_dict(WebDatasetOptions, {"shards": pattern, "workers": workers, **decode}, "real_data")
                results["loaders"][kind][workers] = loader_rate(options, args.batch, args.batches)
                print(kind, workers, results["loaders"][kind][workers], flush=True)
        for workers in WORKERS:
            results["training"][f"shards, {workers} workers"] = digits_step_seconds(
                args.batch, args.steps, [f"real_data.shards={digits}", f"real_data.workers={workers}"])
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(results, indent=2))
    (RESULTS / f"{args.name}.md").write_text(markdown(results) + "\n")
    print(markdown(results))


if __name__ == "__main__":
    main()
