"""MLP students (and learned MLP fake scores and discriminators where the method has them) on the 2-D 8-mode ring,
with the shipped configs: every mode recalled, and sliced W2 close to the teacher's many-step sampler."""

import pytest

from potstill.core.config import load_config
from potstill.core.distiller import Distiller
from potstill.core.evaluation import evaluate_teacher
from tests_support import CONFIGS

SWD_MARGIN = 0.3     # the student's sliced W2 may exceed the 35-NFE teacher's by at most this


@pytest.fixture(scope="module")
def teacher_swd():
    distiller = Distiller(load_config(CONFIGS / "vector" / "gmm_dmd2.yaml"))
    return evaluate_teacher(distiller.modality, distiller.teacher, 35, 10_000, 5000)["swd"]


STEPS = {"gmm_uni_instruct": 3000, "gmm_scm": 3000}     # of their 6000: enough for the check, half the time


@pytest.mark.parametrize("name", ["gmm_dmd2", "gmm_sid", "gmm_uni_instruct", "gmm_cd", "gmm_scm", "gmm_meanflow"])
def test_mlp_student_recalls_every_mode(name, teacher_swd):
    overrides = [f"train.steps={STEPS[name]}"] if name in STEPS else []
    config = load_config(CONFIGS / "vector" / f"{name}.yaml",
                         ["train.progress=false", "train.sample_every=0", "train.checkpoint_every=0", *overrides])
    distiller = Distiller(config)
    distiller.train()
    student = distiller.evaluate()["student"]
    assert student["mode_recall"] == 1.0, student
    assert student["swd"] < teacher_swd + SWD_MARGIN, (student, teacher_swd)
    assert teacher_swd < 2 * student["swd_floor"]
