"""LoRA students and fake scores (core/lora.py): on digits DMD2, only the adapters train, the student's, its EMA's
and the fake score's base weights are the teacher's own tensors (one copy in memory) and stay unchanged, the
checkpoints hold only the adapters, and the opened run samples as the trained one did; wrong layer names and ZeRO-3
are refused by key."""

import pytest
import torch
from safetensors.torch import load_file

from potstill.core.config import ConfigError, load_config
from potstill.core.distiller import Distiller
from potstill.runs import distill, open_run
from tests_support import CONFIGS

LORA = ["generator.lora={rank: 4, alpha: 8}", "fake_score.lora={rank: 4}"]
QUICK = ["real_data=digits", "train.steps=3", "train.batch_size=8", "train.progress=false", "train.sample_every=0",
         "train.generator_every=1", "eval.n_samples=16", "eval.batch_size=16"]


def tensor_ids(module):
    return {id(t) for t in module.parameters()}


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    config = load_config(CONFIGS / "image" / "digits_dmd2.yaml", [*QUICK, *LORA])
    distiller = Distiller(config)
    teacher_before = {k: v.clone() for k, v in distiller.teacher.state_dict().items()}
    adapters_before = {k: v.detach().clone() for k, v in distiller.generator.named_parameters() if v.requires_grad}
    folder = tmp_path_factory.mktemp("lora") / "run"
    distiller.run_dir = folder
    distiller.write_config()
    distiller.train()
    return distiller, folder, teacher_before, adapters_before


def test_only_the_adapters_train_on_the_teachers_own_weights(lora_run):
    distiller, _, teacher_before, adapters_before = lora_run
    trained = {k for k, p in distiller.generator.named_parameters() if p.requires_grad}
    assert trained and all("lora_" in k for k in trained)
    assert all("lora_" in k for k, p in distiller.fake_score.named_parameters() if p.requires_grad)
    assert any(not torch.equal(adapters_before[k], p) for k, p in distiller.generator.named_parameters()
               if k in adapters_before)
    teacher = tensor_ids(distiller.teacher)
    for model in (distiller.generator, distiller.ema.model, distiller.fake_score):
        base = {id(p) for k, p in model.named_parameters() if "lora_" not in k}
        assert base <= teacher
    for key, value in distiller.teacher.state_dict().items():
        assert torch.equal(value, teacher_before[key]), key
    assert all(p.grad is None for p in distiller.teacher.parameters())


def test_checkpoints_hold_the_adapters_and_the_opened_run_samples_alike(lora_run):
    distiller, folder, _, _ = lora_run
    distiller.save()
    checkpoint = sorted((folder / "checkpoints").glob("step_*"))[-1]
    for name in ("generator", "generator_ema", "fake_score"):
        keys = load_file(checkpoint / f"{name}.safetensors").keys()
        assert keys and all("lora_" in k for k in keys), name
    opened = open_run(folder)
    noise, cond = distiller.draw_inputs(8, torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(opened.ema.model.sample(noise, cond), distiller.ema.model.sample(noise, cond))


def test_wrong_layers_and_zero3_are_refused_by_key(tmp_path):
    with pytest.raises(ConfigError, match=r"generator\.lora\.target_modules"):
        Distiller(load_config(CONFIGS / "image" / "digits_dmd2.yaml",
                              [*QUICK, "generator.lora={target_modules: [no_such_layer]}"]))
    with pytest.raises(ConfigError, match=r"generator\.lora: a LoRA copy shares the teacher's weights"):
        distill(load_config(CONFIGS / "image" / "digits_dmd2_deepspeed.yaml", [*QUICK, *LORA]), tmp_path / "run")
