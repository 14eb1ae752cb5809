"""Text encoders split across 2 gloo ranks with ZeRO-3 (`text_encoder.shard: true`): built one parameter at a
time into partitions, they encode as the whole encoders do, with every rank taking part in each forward whichever
prompts it lacks, and a run that reads captions from its own shards on each rank trains as with whole encoders."""

import json

import open_clip
import pytest
import torch
import yaml
from diffusers_fixtures import save_sd3_text_encoders
from safetensors.torch import save_file
from test_deepspeed import assert_same_losses, distill_command, launch_command, run_launch
from test_text_conditioning import TOWER, write_text_teacher

from tests_support import ROOT, logged_losses

SCRIPT = ROOT / "tests" / "distributed" / "sharded_text_encoder.py"



def test_split_text_encoders_encode_as_the_whole_ones(tmp_path):
    """SD3's three encoders (two CLIPs, a T5 with its tied embedding) and an open_clip tower read from a file that
    also holds the image tower, pooled and token outputs, and a seeded random tower: each rank holds half of each,
    and on prompts that differ by rank (on one call a rank lacks none, on another it asks for none) every rank's
    encodings equal the whole encoder's to float rounding, and every rank caches the union."""
    folder = save_sd3_text_encoders(tmp_path / "sd3")
    torch.manual_seed(3)
    clip = open_clip.create_model("ViT-B-32", pretrained=None, pretrained_text=False, **TOWER)
    clip_file = tmp_path / "clip.safetensors"
    save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, clip_file)
    tower = tmp_path / "tower.json"
    tower.write_text(json.dumps(TOWER))
    run_launch(launch_command(str(SCRIPT), str(folder), str(clip_file), str(tower), str(tmp_path)), ROOT)
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for report in reports:
        assert report["t5_tied"]
        for name in ("transformers", "open_clip_tokens_False", "open_clip_tokens_True", "open_clip_random"):
            found = report[name]
            assert max(found["gaps"]) < 1e-5 and found["null_gap"] < 1e-5, (name, found)
            assert found["cached"] == 6, (name, found)
            if "held" in found:
                assert found["partitioned"] and found["held"] == pytest.approx(found["total"] / 2, rel=0.01)


def test_a_run_with_a_split_text_encoder_trains_as_with_a_whole_one(digits_shards, tmp_path):
    """Two ranks read captions from their own shards and draw prompts from a list; with the open_clip tower split
    across them (each encoding collectively once per draw) the losses are those of the same run with the tower
    whole on each rank, and the report says each rank held half of it."""
    config = {
        "modality": {"kind": "image", "classifier": None, "prompts": ["a handwritten digit one", "a cat"]},
        "text_encoder": {"kind": "open_clip", "model": "ViT-B-32", "model_overrides": TOWER},
        "teacher": {"kind": "dit", "checkpoint": str(write_text_teacher(tmp_path / "teacher.safetensors")),
                    "shard": True},
        "generator": {"kind": "denoiser", "times": [2.5]},
        "fake_score": "teacher_copy",
        "objective": "dmd2",
        "adversary": {"kind": "feature_gan", "network": "fake_score"},
        "real_data": {"kind": "webdataset", "shards": digits_shards, "condition": "caption", "workers": 0},
        "engine": {"kind": "deepspeed", "zero_stage": 3},
        "train": {"steps": 4, "batch_size": 8, "progress": False, "log_every": 1, "sample_every": 0,
                  "checkpoint_every": 0},
        "eval": {"n_samples": 16, "batch_size": 16},
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    runs = {}
    for shard in ("true", "false"):
        out = tmp_path / f"shard_{shard}"
        stdout = run_launch(distill_command(path, out, [f"text_encoder.shard={shard}"]), ROOT)
        assert "rank 1/2: text encoder parameters held" in stdout
        runs[shard] = out
    assert_same_losses(logged_losses(runs["true"]), logged_losses(runs["false"]))
    for shard, share in (("true", 0.5), ("false", 1.0)):
        held = json.loads((runs[shard] / "report.json").read_text())["text_encoder_parameters"]
        assert held["main_rank_holds"] == pytest.approx(share * held["total"], rel=0.01)


def test_what_a_split_text_encoder_cannot_read_is_named(tmp_path):
    """Split encoders stream safetensors: a folder of torch weights is refused with the remedy; the flag itself is
    checked as the teacher's is."""
    from potstill.core.config import ConfigError, load_component
    from potstill.core.pretrained import TRANSFORMERS_WEIGHTS, weight_files

    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(ConfigError, match=r"text_encoder\.encoders\[0\]: .* holds no model\.safetensors .*set "
                                          r"text_encoder\.shard: false"):
        weight_files(tmp_path, "text_encoder.encoders[0]", TRANSFORMERS_WEIGHTS)
    with pytest.raises(ConfigError, match=r"text_encoder\.shard: expected true or false, got 'yes'"):
        load_component("text_encoder", {"kind": "open_clip", "shard": "yes"})
    assert load_component("text_encoder", {"kind": "open_clip", "shard": True}).shard
