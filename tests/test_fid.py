"""FID with local Inception weights (core/fid.py, `potstill eval RUN --fid-real PATTERN --inception FILE`): the value
written to the run's report equals torchmetrics' own FID on the same images, made here independently (the
student's samples from the same noise, the real digits read from the dataset rather than the shards); the
settings go together and a missing weights file is named. The weights are a randomly initialised Inception saved
to a file in torch-fidelity's format, so nothing downloads."""

import json

import pytest
import torch
import torch_fidelity.feature_extractor_inceptionv3 as inception_module
from torchmetrics.image.fid import FrechetInceptionDistance

from potstill.cli import main
from potstill.core.config import load_config
from potstill.data.digits import export_digits, load_digits_tensors
from potstill.data.pack import pack
from potstill.runs import distill, open_run
from tests_support import CONFIGS

N = 24


@pytest.fixture(scope="module")
def inception_file(tmp_path_factory):
    """An Inception with PyTorch's default initialisation, in the state-dict file torch-fidelity loads."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(inception_module, "load_state_dict_from_url", lambda *args, **kwargs: None)
        patch.setattr(inception_module.FeatureExtractorInceptionV3, "load_state_dict",
                      lambda self, state, *args, **kwargs: None)
        torch.manual_seed(0)
        network = inception_module.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    path = tmp_path_factory.mktemp("inception") / "pt_inception.pth"
    torch.save(network.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def digits_run_and_shards(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fid")
    export_digits(folder / "all")
    kept = folder / "first"
    kept.mkdir()
    for index in range(N):
        for suffix in (".png", ".cls", ".txt"):
            name = f"digit-{index:04d}{suffix}"
            (kept / name).write_bytes((folder / "all" / name).read_bytes())
    shards = pack(kept, str(folder / "shards" / "real-%06d.tar")).pattern
    run = folder / "run"
    distill(load_config(CONFIGS / "image" / "digits_dmd2.yaml",
                        ["real_data=digits", "train.steps=2", "train.batch_size=8", "train.progress=false",
                         "train.sample_every=0", f"eval.n_samples={N}", "eval.batch_size=8"]), run)
    return run, shards


def as_rgb_bytes(images: torch.Tensor) -> torch.Tensor:
    return ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).expand(-1, 3, -1, -1)


def test_the_reported_fid_is_torchmetrics_fid_of_the_same_images(digits_run_and_shards, inception_file):
    run, shards = digits_run_and_shards
    main(["eval", str(run), "--fid-real", shards, "--inception", str(inception_file)])
    reported = json.loads((run / "report.json").read_text())["fid"]
    assert reported["n_fake"] == reported["n_real"] == N
    distiller = open_run(run)
    noise, cond = distiller.draw_inputs(N, torch.Generator().manual_seed(0))
    with torch.no_grad():
        fake = torch.cat([distiller.ema.model.sample(noise[i:i + 8], cond[i:i + 8]) for i in range(0, N, 8)])
    real = load_digits_tensors()[0][:N]
    metric = FrechetInceptionDistance(feature=2048, feature_extractor_weights_path=str(inception_file))
    metric.update(as_rgb_bytes(fake), real=False)
    metric.update(as_rgb_bytes(real), real=True)
    assert reported["value"] == pytest.approx(float(metric.compute()), rel=1e-6)


def test_fid_settings_go_together_and_a_missing_weights_file_is_named(digits_run_and_shards, tmp_path, capsys):
    run, shards = digits_run_and_shards
    with pytest.raises(SystemExit, match="--fid-real and --inception go together"):
        main(["eval", str(run), "--fid-real", shards])
    with pytest.raises(SystemExit):
        main(["eval", str(run), "--fid-real", shards, "--inception", str(tmp_path / "none.pth")])
    assert "--inception" in capsys.readouterr().err
