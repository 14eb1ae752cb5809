"""`generator.init_from` and `fake_score.init_from`: a run continues another's EMA student and fake score (SiDA
fine-tuning a SiD run), and a path that holds neither is named by its key."""

import pytest
import torch

from potstill.core.config import load_config
from potstill.core.distiller import Distiller
from tests_support import CONFIGS

QUICK = ["train.steps=2", "train.batch_size=8", "train.progress=false", "real_data=digits"]


def test_a_sida_run_starts_from_a_sid_runs_student_and_fake_score(tmp_path):
    first = Distiller(load_config(CONFIGS / "image" / "digits_sid.yaml", QUICK), tmp_path / "sid")
    first.train()
    first.save()
    config = load_config(CONFIGS / "image" / "digits_sida.yaml",
                         [*QUICK, f"generator.init_from={tmp_path / 'sid'}", "fake_score.kind=teacher_copy",
                          f"fake_score.init_from={tmp_path / 'sid'}"])
    second = Distiller(config)
    for mine, theirs in ((second.generator, first.ema.model), (second.fake_score, first.fake_score)):
        pairs = list(zip(mine.state_dict().values(), theirs.state_dict().values(), strict=True))
        assert all(torch.equal(a, b) for a, b in pairs)
    assert not all(torch.equal(a, b) for a, b in zip(second.fake_score.state_dict().values(),
                                                      second.teacher.state_dict().values(), strict=True))


def test_a_fake_score_from_nowhere_is_named(tmp_path):
    config = load_config(CONFIGS / "image" / "digits_sid.yaml",
                         [*QUICK, "fake_score.kind=teacher_copy", f"fake_score.init_from={tmp_path / 'nothing'}"])
    with pytest.raises(FileNotFoundError, match=r"fake_score\.init_from: .*nothing is neither a run directory"):
        Distiller(config)
