"""DMD's regression pairs: made once from the teacher's ODE, cached atomically in `pairs_file`, read back
unchanged by a later run, refused when the file holds another count; the cursor resumes."""

import pytest
import torch
from safetensors.torch import load_file

from potstill.core.distiller import Distiller
from potstill.core.samplers import sample
from tests_support import RING, make_config


def dmd_run(pairs_file, pairs=32, steps=3):
    return Distiller(make_config({"teacher": RING, "generator": {"kind": "mlp"}, "fake_score": {"kind": "mlp"}},
                                 objective={"kind": "dmd", "pairs": pairs, "pair_nfe": 9, "pair_batch": 16,
                                            "pairs_file": str(pairs_file)},
                                 train={"steps": steps, "batch_size": 8}))


def test_pairs_are_the_teachers_ode_outputs_and_are_cached(tmp_path):
    path = tmp_path / "cache" / "pairs.safetensors"
    first = dmd_run(path)
    first.train()
    stored = load_file(path)
    expected = sample(first.teacher, stored["noise"], None, 9)
    torch.testing.assert_close(stored["endpoint"], expected)
    assert not list(path.parent.glob("*.partial"))
    second = dmd_run(path)
    second.train()
    torch.testing.assert_close(second.objective.pairs["target"], stored["endpoint"])
    assert int(first.objective.cursor) == 3 * 8 % 32


def test_pairs_file_with_another_count_is_refused(tmp_path):
    path = tmp_path / "pairs.safetensors"
    dmd_run(path).train()
    with pytest.raises(ValueError, match="pairs_file"):
        dmd_run(path, pairs=64).train()
