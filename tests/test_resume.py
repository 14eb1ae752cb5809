"""Exact resume: a run stopped at step k and resumed logs the same losses, step for step, as one that
never stopped; checkpoints are written atomically."""

import json

import pytest
import torch

from potstill.core import checkpoint as ckpt
from potstill.core.distiller import Distiller
from tests_support import RING, logged_losses, make_config, whole_and_resumed

MLP_RUN = {"teacher": RING, "generator": {"kind": "mlp", "hidden": 32, "depth": 2},
           "fake_score": {"kind": "mlp", "hidden": 32, "depth": 2},
           "train": {"steps": 12, "generator_every": 3, "checkpoint_every": 6, "batch_size": 32}}


RESUMED = {
    "dmd2": {"objective": "dmd2"},
    "sid": {"objective": "sid"},
    "dmd_pairs_cursor": {"objective": {"kind": "dmd", "pairs": 40, "pair_nfe": 5}},
    "fdistill_adversary": {"objective": "fdistill", "adversary": "feature_gan", "real_data": "mixture"},
    "sida_real_data": {"objective": "sida", "real_data": "mixture"},
    "uni_instruct_discriminator_ratio": {"objective": "uni_instruct", "adversary": "feature_gan",
                                         "real_data": "mixture"},
    "cd_target_network": {"objective": "cd", "fake_score": None, "real_data": "mixture",
                          "generator": {"kind": "consistency", "network": {"kind": "mlp", "hidden": 32, "depth": 2}}},
}


@pytest.mark.parametrize("name", list(RESUMED))
def test_resumed_run_logs_the_same_losses(tmp_path, name):
    config = make_config(MLP_RUN, **RESUMED[name])
    whole, resumed, resumed_from = whole_and_resumed(config, tmp_path, stop_after=8)
    assert resumed_from == 6             # the checkpoint at step 6; steps 7 and 8 were lost
    assert logged_losses(tmp_path / "split") == logged_losses(tmp_path / "whole")
    assert [row["step"] for row in logged_losses(tmp_path / "split")] == list(range(1, 13))
    for name, value in whole.generator.state_dict().items():
        torch.testing.assert_close(resumed.generator.state_dict()[name], value, rtol=0, atol=0)


def test_checkpoint_is_atomic_and_pruned(tmp_path):
    folder = tmp_path / "checkpoints"
    weights = {"generator": {"w": torch.ones(2)}}
    for step in (1, 2, 3):
        ckpt.save_checkpoint(folder, step, weights, {"step": step}, keep=2)
    assert sorted(p.name for p in folder.glob("step_*")) == ["step_00000002", "step_00000003"]
    (folder / ".step_00000004.tmp").mkdir()           # a write that was killed half-way
    latest = ckpt.latest_checkpoint(folder)
    assert latest.name == "step_00000003" and ckpt.load_state(latest)["step"] == 3
    torch.testing.assert_close(ckpt.load_weights(latest, "generator")["w"], torch.ones(2))
    with pytest.raises(FileNotFoundError, match="no weights for 'fake_score'"):
        ckpt.load_weights(latest, "fake_score")


def test_log_is_cut_back_on_resume(tmp_path):
    config = make_config(train={"steps": 4, "checkpoint_every": 2})
    run = Distiller(config, tmp_path)
    run.train()
    assert [json.loads(line)["step"] for line in (tmp_path / "logs" / "metrics.jsonl").read_text().splitlines()] == \
        [1, 2, 3, 4]
    again = Distiller(config, tmp_path)
    again.load(tmp_path / "checkpoints" / "step_00000002")
    again.train(steps=1)
    assert [row["step"] for row in logged_losses(tmp_path)] == [1, 2, 3]
