"""Checkpoints that survive faults and say so: no code runs from a run folder, every file is verified
against the manifest, a damaged or missing `latest` falls back to the newest intact checkpoint, a
complete checkpoint is never removed before its replacement, and a poisoned model is never saved."""

import json
import logging
import os
import pickle
import shutil

import pytest
import torch

from potstill.core import checkpoint as ckpt
from potstill.core.distiller import Distiller
from potstill.core.engine import NonFiniteError
from potstill.runs import distill, open_run
from tests_support import RING, make_config

RUN = {"teacher": RING, "generator": {"kind": "mlp", "hidden": 16, "depth": 2},
       "fake_score": {"kind": "mlp", "hidden": 16, "depth": 2},
       "train": {"steps": 6, "checkpoint_every": 2, "keep_checkpoints": 3, "batch_size": 16},
       "eval": {"n_samples": 64, "batch_size": 64}}
MARKER_NAME = "code_ran"


class Planted:
    """An object whose unpickling creates a file: what a shared run folder could carry in `state.pt`."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def trained_run(tmp_path):
    run = tmp_path / "run"
    distill(make_config(RUN), run)
    return run, run / "checkpoints"


def step_folder(folder, step):
    return ckpt.final_folder(folder, step)


def reseal(checkpoint):
    """Rewrite the manifest to match the files now present, as someone planting a file could."""
    ckpt.write_manifest(checkpoint, ckpt.checkpoint_step(checkpoint))


def flip_byte(path, offset=-100):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_state_holds_only_tensors_and_plain_values(tmp_path):
    _, folder = trained_run(tmp_path)
    state = torch.load(step_folder(folder, 6) / ckpt.STATE_FILE, weights_only=True)
    assert state["step"] == 6 and set(state["rng"]) == {"torch", "numpy", "python", "cuda"}


def test_a_planted_pickle_never_runs(tmp_path):
    run, folder = trained_run(tmp_path)
    marker = tmp_path / MARKER_NAME
    latest = step_folder(folder, 6)
    with open(latest / ckpt.STATE_FILE, "wb") as f:
        pickle.dump({"step": 6, "payload": Planted(str(marker))}, f)
    reseal(latest)
    sampler = open_run(run)                          # sampling reads the step from the manifest
    assert sampler.step == 6 and not marker.exists()
    resumed = Distiller(make_config(RUN), run)
    with pytest.raises(ckpt.CheckpointError, match=r"state\.pt: refused"):
        resumed.load(latest)
    assert not marker.exists()


@pytest.mark.parametrize("damage", ["flip", "truncate"])
@pytest.mark.parametrize("name", ["state.pt", "generator_ema.safetensors"])
def test_a_damaged_file_is_named_and_resume_falls_back(tmp_path, caplog, damage, name):
    run, folder = trained_run(tmp_path)
    path = step_folder(folder, 6) / name
    if damage == "flip":
        flip_byte(path)
    else:
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ckpt.CheckpointError, match=name.replace(".", r"\.")):
        Distiller(make_config(RUN), run).load(step_folder(folder, 6))
    resumed = Distiller(make_config(RUN), run)
    with caplog.at_level(logging.WARNING, logger="potstill.checkpoint"):
        assert resumed.resume()
    assert resumed.step == 4
    assert name in caplog.text and "step_00000004" in caplog.text
    if name.endswith(".safetensors"):
        with pytest.raises(ckpt.CheckpointError, match=name.replace(".", r"\.")):
            open_run(step_folder(folder, 6))
        assert open_run(run).step == 4


def test_latest_pointing_at_nothing_falls_back(tmp_path, caplog):
    run, folder = trained_run(tmp_path)
    (folder / ckpt.LATEST).write_text("step_00000099")
    with caplog.at_level(logging.WARNING, logger="potstill.checkpoint"):
        assert open_run(run).step == 6
    assert "step_00000099, which does not exist" in caplog.text and "step_00000006" in caplog.text


def test_no_intact_checkpoint_is_an_error_listing_each(tmp_path):
    run, folder = trained_run(tmp_path)
    for checkpoint in ckpt.checkpoint_folders(folder):
        flip_byte(checkpoint / "generator.safetensors")
    with pytest.raises(ckpt.CheckpointError, match="no complete checkpoint") as error:
        Distiller(make_config(RUN), run).resume()
    assert str(error.value).count("generator.safetensors") == 3


def test_the_same_step_is_not_saved_twice(tmp_path):
    _, folder = trained_run(tmp_path)       # checkpoint_every 2 with 6 steps: the end-of-run save is step 6 again
    final = step_folder(folder, 6)
    with pytest.raises(FileExistsError, match="complete checkpoint of this step"):
        staging = ckpt.staging_folder(folder, 6)
        ckpt.clear_folder(staging)
        ckpt.commit_checkpoint(folder, staging, final)
    assert ckpt.checkpoint_problem(final) is None and ckpt.latest_checkpoint(folder) == final


def test_an_incomplete_folder_of_the_same_step_is_replaced(tmp_path):
    folder = tmp_path / "checkpoints"
    (folder / "step_00000003").mkdir(parents=True)      # a folder without a manifest: not a checkpoint
    ckpt.save_checkpoint(folder, 3, {"generator": {"w": torch.ones(2)}}, {"step": 3})
    assert ckpt.checkpoint_problem(folder / "step_00000003") is None


def test_pruning_keeps_newer_folders_and_the_new_one(tmp_path):
    folder = tmp_path / "checkpoints"
    for step in (1, 2, 3, 9):
        ckpt.save_checkpoint(folder, step, {"generator": {"w": torch.ones(2)}}, {"step": step}, keep=5)
    ckpt.save_checkpoint(folder, 4, {"generator": {"w": torch.ones(2)}}, {"step": 4}, keep=2)
    assert [p.name for p in ckpt.checkpoint_folders(folder)] == ["step_00000003", "step_00000004", "step_00000009"]


def test_files_and_folders_are_fsynced_before_the_rename(tmp_path, monkeypatch):
    synced, renamed = [], []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(os.readlink(f"/proc/self/fd/{fd}")) or real_fsync(fd))
    monkeypatch.setattr(os, "replace", lambda a, b: renamed.append((str(a), len(synced))) or real_replace(a, b))
    folder = tmp_path / "checkpoints"
    ckpt.save_checkpoint(folder, 1, {"generator": {"w": torch.ones(2)}}, {"step": 1})
    staging = str(ckpt.staging_folder(folder, 1))
    before_rename = synced[: next(count for name, count in renamed if name == staging)]
    for name in ("generator.safetensors", ckpt.STATE_FILE, ckpt.MANIFEST + ".tmp"):   # the manifest: renamed in
        assert f"{staging}/{name}" in before_rename
    assert staging in before_rename


def test_a_poisoned_model_never_becomes_latest(tmp_path):
    run, folder = trained_run(tmp_path)
    distiller = Distiller(make_config(RUN, train={"steps": 8}), run)
    distiller.resume()
    with torch.no_grad():
        next(distiller.generator.parameters())[0] = float("nan")
    distiller.step = 7
    with pytest.raises(NonFiniteError, match=r"generator\.\S+ is not finite at step 7"):
        distiller.save()
    assert ckpt.latest_checkpoint(folder).name == "step_00000006"
    assert not step_folder(folder, 7).exists()


def test_stale_checkpoint_folders_refuse_a_fresh_run(tmp_path):
    run, folder = trained_run(tmp_path)
    (folder / ckpt.LATEST).unlink()
    with pytest.raises(FileExistsError, match="already holds a run"):
        distill(make_config(RUN), run)
    assert len(ckpt.checkpoint_folders(folder)) == 3


def test_the_manifest_lists_every_file_with_its_digest(tmp_path):
    _, folder = trained_run(tmp_path)
    manifest = json.loads((step_folder(folder, 6) / ckpt.MANIFEST).read_text())
    assert manifest["step"] == 6
    assert set(manifest["files"]) == {p.name for p in step_folder(folder, 6).iterdir()} - {ckpt.MANIFEST}


class Killed(BaseException):
    """Stands for a SIGKILL: nothing after it runs."""


FILE_OPERATIONS = [(os, "replace"), (os, "fsync"), (shutil, "rmtree"), (torch, "save")]


def count_or_kill(monkeypatch, kill_at: int | None) -> list[str]:
    """Patch the file operations a save makes so that they are counted, and the `kill_at`-th raises Killed."""
    calls: list[str] = []
    for module, name in FILE_OPERATIONS:
        real = getattr(module, name)

        def operation(*args, real=real, name=name, **kwargs):
            calls.append(name)
            if kill_at is not None and len(calls) == kill_at + 1:
                raise Killed
            return real(*args, **kwargs)
        monkeypatch.setattr(module, name, operation)
    return calls


def saving_step_6_again(run):
    """The run resumed from step 4 and trained to step 6, about to save (step 6 was lost)."""
    distiller = Distiller(make_config(RUN, train={"checkpoint_every": 0}), run)
    distiller.resume()
    distiller.train()
    return distiller


def test_a_kill_in_any_checkpoint_window_leaves_a_run_that_resumes(tmp_path, monkeypatch):
    run, folder = trained_run(tmp_path)
    shutil.rmtree(step_folder(folder, 6))
    (folder / ckpt.LATEST).write_text("step_00000004")
    pristine = tmp_path / "pristine"
    shutil.copytree(run, pristine)
    with monkeypatch.context() as patch:
        distiller = saving_step_6_again(run)
        calls = count_or_kill(patch, None)
        distiller.save()
    assert len(calls) > 8
    for kill_at in range(len(calls)):
        shutil.rmtree(run)
        shutil.copytree(pristine, run)
        distiller = saving_step_6_again(run)
        with monkeypatch.context() as patch:
            count_or_kill(patch, kill_at)
            with pytest.raises(Killed):
                distiller.save()
        again = Distiller(make_config(RUN), run)
        assert again.resume() and again.step in (4, 6), calls[kill_at]
