"""Every setting is checked before work starts: out-of-range values at config load, and teacher or classifier
weights that are missing, unreadable or of another architecture when they are loaded; each error names its key."""

import pickle
import re

import pytest
import torch
from safetensors.torch import save_file

from potstill.cli import main
from potstill.core.config import ConfigError, load_config
from potstill.modalities.image import DiTTeacherOptions, build_dit_denoiser, load_classifier
from tests_support import CONFIGS, GAUSSIAN_TEACHER

VECTOR = {"modality": "vector", "teacher": GAUSSIAN_TEACHER, "generator": "gaussian",
          "fake_score": "exact_gaussian", "objective": "dmd2"}

BOUNDS = [      # key, the edge value that loads, a value just past it (each is refused with the key first)
    ("train.steps", 1, 0), ("train.batch_size", 1, 0), ("train.grad_accum", 1, 0),
    ("train.generator_every", 1, 0), ("train.fake_score_updates", 1, 0), ("train.discriminator_every", 1, 0),
    ("train.log_every", 1, 0), ("train.keep_checkpoints", 1, 0),
    ("train.checkpoint_every", 0, -1), ("train.sample_every", 0, -1),
    ("train.ema_decay", 0, 1), ("train.ema_decay", 0.9999, -0.1),
    ("optim.generator.lr", 1e-9, 0), ("optim.fake_score.lr", 1e-9, -1e-4), ("optim.discriminator.eps", 1e-12, 0),
    ("optim.generator.weight_decay", 0, -0.01), ("optim.generator.grad_clip", "null", 0),
    ("optim.generator.betas", "[0, 0.999]", "[0.9, 1.0]"), ("optim.discriminator.betas", "[0, 0.5]", "[0.9]"),
    ("optim.fake_score.betas", "[0, 0.5]", "[-0.1, 0.9]"),
    ("eval.n_samples", 1, 0), ("eval.batch_size", 1, 0), ("eval.teacher_nfe", "[1, 4]", "[4, 0]"),
]


@pytest.mark.parametrize(("key", "edge", "past"), BOUNDS, ids=lambda v: str(v))
def test_out_of_range_settings_fail_at_load_naming_the_key(key, edge, past):
    load_config(data=VECTOR, overrides=[f"{key}={edge}"])
    with pytest.raises(ConfigError, match=rf"^{re.escape(key)}: must be .*, got "):
        load_config(data=VECTOR, overrides=[f"{key}={past}"])


def test_a_bad_eval_setting_stops_distill_before_the_run_starts(tmp_path, capsys):
    run = tmp_path / "run"
    with pytest.raises(SystemExit) as stop:
        main(["distill", str(CONFIGS / "vector" / "gmm_dmd2.yaml"), "--out", str(run), "--set", "eval.n_samples=0"])
    assert stop.value.code == 2
    assert capsys.readouterr().err == "potstill: error: eval.n_samples: must be at least 1, got 0\n"
    assert not run.exists()


def unreadable_weights(folder):
    """Files that are not weights: text, a torch pickle of other objects, a pickle named .safetensors."""
    (folder / "notes.txt").write_text("these are not weights\n")
    (folder / "text.safetensors").write_text("these are not weights either\n")
    torch.save({"model": {"w": torch.zeros(2)}, "args": pickle.PickleError("not a tensor")}, folder / "objects.pt")
    torch.save({"w": torch.zeros(2)}, folder / "pickled.safetensors")
    torch.save(torch.zeros(3), folder / "tensor.pt")
    return ["notes.txt", "text.safetensors", "objects.pt", "pickled.safetensors", "tensor.pt"]


def test_unreadable_teacher_and_classifier_files_name_their_key(tmp_path):
    for name in unreadable_weights(tmp_path):
        path = str(tmp_path / name)
        with pytest.raises(ValueError, match=rf"^teacher\.checkpoint: {re.escape(path)} (is|holds) ") as error:
            build_dit_denoiser(DiTTeacherOptions(checkpoint=path))
        assert "\n" not in str(error.value)
        with pytest.raises(ValueError, match=rf"^modality\.classifier: {re.escape(path)} (is|holds) "):
            load_classifier(path)


@pytest.mark.parametrize(("key", "load"), [
    ("teacher.checkpoint", lambda path: build_dit_denoiser(DiTTeacherOptions(checkpoint=path))),
    ("modality.classifier", load_classifier),
])
def test_missing_weights_name_the_key_and_the_choices(tmp_path, key, load):
    key_pattern, missing = re.escape(key), tmp_path / "missing.safetensors"
    with pytest.raises(FileNotFoundError, match=rf"^{key_pattern}: {re.escape(str(missing))} does not exist"):
        load(str(missing))
    with pytest.raises(ValueError, match=rf"^{key_pattern}: {re.escape(str(tmp_path))} is a directory, not a"):
        load(str(tmp_path))
    with pytest.raises(ValueError, match=rf"^{key_pattern}: unknown embedded weights 'embedded:digits_teachr'; "
                                         "valid choices: embedded:digits_classifier, embedded:digits_teacher, "
                                         "embedded:moving_digits_classifier, embedded:moving_digits_teacher, "
                                         "embedded:shapes_teacher, embedded:tones_classifier, "
                                         "embedded:tones_teacher$"):
        load("embedded:digits_teachr")


def test_a_teacher_of_another_architecture_lists_a_few_keys_and_counts():
    with pytest.raises(ValueError) as error:
        build_dit_denoiser(DiTTeacherOptions(dit={"depth": 6, "hidden_size": 96}))
    message = str(error.value)
    assert message.startswith("teacher.checkpoint: embedded:digits_teacher does not match the DiT configuration")
    assert "20 keys missing: blocks.4.attn.qkv.weight," in message and "and 15 more" in message
    assert "51 keys of another shape (checkpoint vs model): pos_embed (1, 16, 64) vs (1, 16, 96)," in message
    assert len(message) < 1000 and "\n" not in message


def test_weights_of_another_model_name_the_key(tmp_path):
    path = tmp_path / "other.safetensors"
    save_file({f"encoder.layer{i}.weight": torch.zeros(2) for i in range(8)}, str(path))
    with pytest.raises(ValueError, match=r"^modality\.classifier: .* \(10 keys missing: trunk\.0\.weight, .*; "
                                         r"8 keys unexpected: encoder\.layer0\.weight, .*, and 3 more\)$"):
        load_classifier(str(path))
    with pytest.raises(ValueError, match=r"^modality\.classifier: embedded:digits_teacher does not match"):
        load_classifier("embedded:digits_teacher")
    with pytest.raises(ValueError, match=r"^teacher\.checkpoint: embedded:digits_classifier does not match"):
        build_dit_denoiser(DiTTeacherOptions(checkpoint="embedded:digits_classifier"))
