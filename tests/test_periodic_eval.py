"""`eval.every`: the EMA student scored every N steps into logs/evals.jsonl with the seconds spent training and the
generator updates so far, without changing the run, and kept consistent through a resume."""

from potstill.core.distiller import Distiller
from potstill.core.run_log import read_log
from tests_support import logged_losses, make_config, whole_and_resumed

EVERY = {"every": 4, "every_n_samples": 500}


def test_periodic_evaluations_score_the_student_and_leave_the_run_unchanged(tmp_path):
    """Records at steps 4, 8, 12 (generator every 2nd step: 2, 4, 6 updates) with the modality's metrics on 500
    samples and training seconds that grow; the losses equal those of the same run without them."""
    sections = {"train": {"steps": 12, "batch_size": 64, "progress": False, "log_every": 1, "generator_every": 2}}
    scored = Distiller(make_config(eval=EVERY, **sections), tmp_path / "scored")
    scored.train()
    plain = Distiller(make_config(**sections), tmp_path / "plain")
    plain.train()
    assert logged_losses(tmp_path / "scored") == logged_losses(tmp_path / "plain")
    records = read_log(tmp_path / "scored" / "logs" / "evals.jsonl")
    assert [r["step"] for r in records] == [4, 8, 12]
    assert [r["generator_updates"] for r in records] == [2, 4, 6]
    seconds = [r["train_seconds"] for r in records]
    assert 0 < seconds[0] < seconds[1] < seconds[2] == scored.train_seconds
    direct = scored.record_evaluation()
    assert {k: v for k, v in records[-1].items() if k != "ms_per_sample"} == \
        {k: v for k, v in direct.items() if k != "ms_per_sample"}          # the metrics are the EMA student's
    assert {"nfe", "swd", "mode_recall", "ms_per_sample"} <= direct.keys()
    assert not (tmp_path / "plain" / "logs" / "evals.jsonl").exists()


def test_a_resumed_run_keeps_one_record_per_step_and_its_training_seconds(tmp_path):
    """Stopped after 10 steps (last checkpoint at 6), resumed to 16: the records after step 6 are written again,
    once, and training seconds carry on from the checkpoint's."""
    config = make_config(eval=EVERY, train={"steps": 16, "batch_size": 64, "progress": False, "log_every": 1,
                                            "checkpoint_every": 6})
    whole, resumed, resumed_from = whole_and_resumed(config, tmp_path, stop_after=10)
    assert resumed_from == 6
    records = read_log(tmp_path / "split" / "logs" / "evals.jsonl")
    assert [r["step"] for r in records] == [4, 8, 12, 16]
    assert records[1]["train_seconds"] > records[0]["train_seconds"]
    assert records[-1]["train_seconds"] == resumed.train_seconds and whole.step == resumed.step == 16
    assert [r["generator_updates"] for r in records] == [r["generator_updates"] for r in
                                                         read_log(tmp_path / "whole" / "logs" / "evals.jsonl")]
    assert logged_losses(tmp_path / "split") == logged_losses(tmp_path / "whole")
