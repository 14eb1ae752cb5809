"""Every shipped objective config builds its components and takes training steps that change the
generator; the long runs that show what each reaches are in benchmarks/objectives.py. The
`*_deepspeed.yaml` configs are launched with 2 ranks in test_deepspeed.py."""

import pytest
import torch

from potstill.core.config import load_config
from potstill.core.distiller import Distiller
from tests_support import CONFIGS

SHIPPED = sorted(p for folder in ("vector", "image", "text_to_3d") for p in (CONFIGS / folder).glob("*.yaml")
                 if not p.stem.endswith(("_base", "_deepspeed", "_teacher")))   # teachers: test_train_teacher


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_shipped_config_trains(path, tmp_path, digits_shards):
    overrides = ["train.steps=2", "train.batch_size=8", "train.progress=false", "train.generator_every=1",
                 "train.sample_every=0", "train.checkpoint_every=0"]
    config = load_config(path, overrides)
    if config.real_data is not None and config.real_data.kind == "webdataset":
        overrides.append(f"real_data.shards={digits_shards}")
    if config.objective.kind == "dmd":
        overrides += ["objective.pairs=16", "objective.pair_nfe=5", f"objective.pairs_file={tmp_path / 'pairs.st'}"]
    config = load_config(path, overrides)
    distiller = Distiller(config)
    before = [p.detach().clone() for p in distiller.generator.parameters()]
    distiller.train()
    assert distiller.step == 2
    assert any(not torch.equal(a, b) for a, b in zip(before, distiller.generator.parameters(), strict=True))
