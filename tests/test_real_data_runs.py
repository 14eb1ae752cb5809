"""Real data in distillation runs: the digits DMD2-with-GAN and APT configs stream packed shards and
resume on exactly the same losses; skipped data shows in the run's log and report; decoded video and
audio clips stream into discriminator steps."""

import json
import shutil

import pytest
import torch
from media_fixtures import pack_folder, truncate_inside, write_media_folder
from torch import nn

from potstill.core.adversarial.losses import discriminator_gan_loss, r1_penalty
from potstill.core.config import from_dict, load_config
from potstill.core.distiller import Distiller
from potstill.core.run_log import read_log
from potstill.data.webdataset_source import WebDatasetOptions, open_stream
from potstill.runs import open_run
from tests_support import CONFIGS, logged_losses, whole_and_resumed

QUICK = ["train.steps=8", "train.batch_size=8", "train.progress=false", "train.log_every=1", "train.sample_every=0",
         "train.checkpoint_every=4", "train.generator_every=2", "real_data.workers=2", "eval.n_samples=100",
         "eval.batch_size=100"]


@pytest.mark.parametrize("name", ["digits_dmd2", "digits_apt"])
def test_shard_streaming_run_resumes_on_the_same_losses(name, digits_shards, tmp_path):
    config = load_config(CONFIGS / "image" / f"{name}.yaml", [*QUICK, f"real_data.shards={digits_shards}"])
    _, _, resumed_from = whole_and_resumed(config, tmp_path, stop_after=6)
    assert resumed_from == 4             # the checkpoint at step 4; steps 5 and 6 were lost
    assert logged_losses(tmp_path / "split") == logged_losses(tmp_path / "whole")
    logged = logged_losses(tmp_path / "whole")
    assert logged[-1]["data_samples"] > 0 and "d_loss" in logged[0]


def test_skipped_data_is_logged_and_reported(tmp_path, digits_shards):
    from potstill.data.digits import export_digits
    from potstill.data.pack import pack

    export_digits(tmp_path / "png")
    (tmp_path / "png" / "digit-0005.png").write_bytes(b"broken")
    shards = pack(tmp_path / "png", str(tmp_path / "shards" / "d-%06d.tar"), maxcount=300)
    truncate_inside(shards.shards[2], 30)
    config = load_config(CONFIGS / "image" / "digits_dmd2.yaml",
                         [*QUICK, "train.steps=40", "train.batch_size=64", "train.checkpoint_every=0",
                          f"real_data.shards={shards.pattern}"])
    run = Distiller(config, tmp_path / "run")
    run.train()
    report = run.evaluate()["real_data"]
    last = read_log(tmp_path / "run" / "logs" / "metrics.jsonl")[-1]
    assert last["data_skipped"] >= 1 and last["data_bad_shards"] >= 1
    assert report["skipped"] == last["data_skipped"] and report["bad_shards"] == last["data_bad_shards"]
    events = {(e["reason"], e["key"] if e["reason"] != "truncated_shard" else e["shard"]) for e in report["recent"]}
    assert ("undecodable", "digit-0005") in events
    assert ("truncated_shard", str(shards.shards[2])) in events
    assert json.loads((tmp_path / "run" / "report.json").read_text())["real_data"]["skipped"] == report["skipped"]
    run.write_config()
    run.save()
    shutil.rmtree(tmp_path / "shards")
    reopened = open_run(tmp_path / "run")                          # sampling needs the weights, not the shards
    noise, cond = reopened.fixed_inputs(4)
    assert reopened.real_data is None and reopened.ema.model.sample(noise, cond).shape == (4, 1, 8, 8)


class TinyCritic(nn.Module):
    """A small discriminator for [B, C, ...] clips: convolutions over the time/space axes, mean-pooled."""

    def __init__(self, conv: type[nn.Module], channels: int) -> None:
        super().__init__()
        self.net = nn.Sequential(conv(channels, 8, 3, padding=1), nn.SiLU(), conv(8, 8, 3, stride=2, padding=1),
                                 nn.SiLU(), conv(8, 1, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).flatten(1).mean(1)


@pytest.mark.parametrize(("media", "decode", "conv", "shape"), [
    ("video", {"video": {"frames": 6, "size": 24}}, nn.Conv3d, (3, 6, 24, 24)),
    ("audio", {"audio": {"sample_rate": 8000, "length": 3000}}, nn.Conv1d, (1, 3000)),
])
def test_decoded_clips_train_a_discriminator(media, decode, conv, shape, tmp_path):
    write_media_folder(tmp_path / "src", media, 8)
    shards = pack_folder(tmp_path / "src", tmp_path / "shards", maxcount=2)
    options = from_dict(WebDatasetOptions, {"shards": str(tmp_path / "shards" / "part-{000000..000003}.tar"),
                                            "media": media, "workers": 2, "condition": "label", **decode})
    stream = open_stream(options, 4, seed=0)
    torch.manual_seed(0)
    critic = TinyCritic(conv, shape[0])
    optimizer = torch.optim.Adam(critic.parameters(), lr=1e-2)
    losses = []
    for _ in range(50):
        real, labels = stream.next(4)
        assert real.shape == (4, *shape) and labels.dtype == torch.long and real.abs().max() <= 1
        fake = 0.3 * torch.randn_like(real)
        loss = discriminator_gan_loss(critic(real), critic(fake), "non_saturating") + 0.01 * r1_penalty(critic, real)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert len(shards) == 4 and stream.report()["skipped"] == 0
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5        # it learns to tell the real clips apart
