"""Text conditioning: open_clip text towers built offline (seeded random init, or weights from a local
file), prompt embeddings cached; `potstill data embed` writes them into new shards; a text-conditioned
DiT teacher distils with prompts, and its GAN head reads real digits with captions or stored embeddings; with
`tokens`, the tower's token states (and its pooled embedding packed after them) condition a diffusers UNet."""

import io
import json
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import open_clip
import pytest
import torch
from diffusers import DDPMScheduler
from diffusers_fixtures import tiny_unet
from safetensors.torch import save_file

from potstill.backbones.dit import DiT, DiTOptions
from potstill.backbones.text_encoders import OpenClipTextEncoder, OpenClipTextOptions
from potstill.cli import main
from potstill.core.config import from_dict, load_config
from potstill.core.distiller import Distiller
from potstill.core.registry import TEACHERS
from potstill.data.shard_stream import read_shards

TOWER = {"embed_dim": 16, "text_cfg": {"context_length": 24, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
         "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 16}}
TEXT_ENCODER = {"kind": "open_clip", "model": "ViT-B-32", "model_overrides": TOWER}


def tiny_encoder(**changes) -> OpenClipTextEncoder:
    options = {k: v for k, v in TEXT_ENCODER.items() if k != "kind"} | changes
    return OpenClipTextEncoder(from_dict(OpenClipTextOptions, options, "text_encoder"))


def test_random_towers_are_seeded_and_embeddings_cached(monkeypatch):
    first, again, other = tiny_encoder(), tiny_encoder(), tiny_encoder(init_seed=1)
    prompts = ["a handwritten digit seven", "a cat", "a handwritten digit seven"]
    embedded = first.encode(prompts)
    assert embedded.shape == (3, 16) and torch.allclose(embedded.norm(dim=1), torch.ones(3))
    torch.testing.assert_close(embedded, again.encode(prompts))
    assert not torch.allclose(embedded, other.encode(prompts))
    torch.testing.assert_close(embedded[0], embedded[2])
    calls = []
    monkeypatch.setattr(first, "_compute", lambda batch: calls.append(list(batch)) or torch.zeros(len(batch), 16))
    torch.testing.assert_close(first.encode(["a cat"]), embedded[1:2])
    first.encode(["a dog", "a cat", "a dog"])
    assert calls == [["a dog"]]                                  # only the prompt it had not seen


def test_weights_load_from_a_local_file(tmp_path):
    torch.manual_seed(3)
    source = open_clip.create_model("ViT-B-32", pretrained=None, pretrained_text=False, **TOWER)
    path = tmp_path / "tiny_clip.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, path)
    loaded = tiny_encoder(checkpoint=str(path))
    tokens = open_clip.get_tokenizer("ViT-B-32", context_length=24)(["a red square"])
    torch.testing.assert_close(loaded.encode(["a red square"]), source.encode_text(tokens, normalize=True).detach())
    with pytest.raises(FileNotFoundError, match=r"text_encoder\.checkpoint: .* does not exist"):
        tiny_encoder(checkpoint=str(tmp_path / "missing.bin"))
    with pytest.raises(ValueError, match=r"text_encoder\.model: open_clip has no model 'ViT-Q-99'"):
        tiny_encoder(model="ViT-Q-99")


def stored_embeddings(samples: list[dict]) -> torch.Tensor:
    return torch.from_numpy(np.stack([np.load(io.BytesIO(s["text_emb.npy"])) for s in samples]))


@pytest.fixture(scope="module")
def embedded_shards(digits_shards, tmp_path_factory):
    out = tmp_path_factory.mktemp("embedded")
    main(["data", "embed", digits_shards, str(out), "--set", f"model_overrides={json.dumps(TOWER)}"])
    return str(out / digits_shards.rsplit("/", 1)[1])


def test_embed_writes_each_caption_embedding(embedded_shards, digits_shards):
    encoder = tiny_encoder()
    before = list(read_shards([digits_shards.replace("{000000..000005}", "000001")], []))
    after = list(read_shards([embedded_shards.replace("{000000..000005}", "000001")], []))
    assert [s["__key__"] for s in after] == [s["__key__"] for s in before] and len(after) == 300
    stored = stored_embeddings(after[:20])
    expected = encoder.encode([s["txt"].decode() for s in after[:20]])
    torch.testing.assert_close(stored, expected)
    assert all(a["png"] == b["png"] and a["cls"] == b["cls"] for a, b in zip(after, before, strict=True))


def test_embed_takes_a_run_configs_text_encoder(digits_shards, embedded_shards, tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text(json.dumps({"text_encoder": TEXT_ENCODER}))        # JSON is YAML
    one_shard = digits_shards.replace("{000000..000005}", "000002")
    main(["data", "embed", one_shard, str(tmp_path / "out"), "--config", str(config)])
    assert "embedded 300 of 300 samples' captions into 1 shards" in capsys.readouterr().out
    written = list(read_shards([str(tmp_path / "out" / "digits-000002.tar")], []))
    same = list(read_shards([embedded_shards.replace("{000000..000005}", "000002")], []))
    torch.testing.assert_close(stored_embeddings(written), stored_embeddings(same))     # batches differ: not bits


def write_text_teacher(path: Path) -> Path:
    """A small random DiT on 8x8 grey images conditioned on 16-wide pooled text embeddings."""
    options = DiTOptions(input_size=8, patch_size=2, in_channels=1, hidden_size=32, depth=2, num_heads=2,
                         num_classes=0, learn_sigma=False, text_dim=16)
    torch.manual_seed(0)
    dit = DiT(options)
    with torch.no_grad():
        for parameter in dit.parameters():
            if parameter.requires_grad:
                parameter.normal_(0, 0.05)          # past DiT's zero init, so the text embedding matters
    metadata = {"dit": asdict(options), "schedule": "edm", "prediction": "edm", "sigma_data": 0.5}
    save_file({k: v.contiguous() for k, v in dit.state_dict().items()}, path,
              metadata={"potstill": json.dumps(metadata)})
    return path


@pytest.fixture(scope="module")
def text_teacher(tmp_path_factory) -> str:
    return str(write_text_teacher(tmp_path_factory.mktemp("teacher") / "text_dit.safetensors"))


@pytest.mark.parametrize("condition", ["caption", "embedding"])
def test_text_conditioned_teacher_distils_with_real_captions(condition, text_teacher, digits_shards,
                                                             embedded_shards):
    real = {"kind": "webdataset", "shards": digits_shards if condition == "caption" else embedded_shards,
            "condition": condition, "workers": 0}
    config = load_config(data={
        "modality": {"kind": "image", "classifier": None, "prompts": ["a handwritten digit one", "a cat"]},
        "text_encoder": TEXT_ENCODER,
        "teacher": {"kind": "dit", "checkpoint": text_teacher},
        "generator": {"kind": "denoiser", "times": [2.5]},
        "fake_score": "teacher_copy",
        "objective": "dmd2",
        "adversary": {"kind": "feature_gan", "network": "fake_score"},
        "real_data": real,
        "train": {"steps": 2, "batch_size": 4, "progress": False},
    })
    run = Distiller(config)
    _, cond = run.draw_inputs(6, torch.Generator().manual_seed(0))
    assert cond.shape == (6, 16) and cond.dtype == torch.float32
    prompts = run.text_encoder.encode(["a handwritten digit one", "a cat"])
    assert all(any(torch.equal(row, p) for p in prompts) for row in cond)
    real_x, real_cond = run.next_real(4)
    assert real_x.shape == (4, 1, 8, 8) and real_cond.shape == (4, 16)
    before = [p.detach().clone() for p in run.generator.parameters()]
    run.train()
    assert any(not torch.equal(a, b) for a, b in zip(before, run.generator.parameters(), strict=True))


def test_missing_text_encoder_is_named(text_teacher, digits_shards):
    base = {"modality": {"kind": "image", "classifier": None, "prompts": ["a cat"]},
            "teacher": {"kind": "dit", "checkpoint": text_teacher}, "generator": {"kind": "denoiser", "times": [2.5]},
            "objective": "sds", "train": {"batch_size": 4, "progress": False}}
    with pytest.raises(ValueError, match=r"modality\.prompts: prompts need a text encoder"):
        Distiller(load_config(data=base))
    wide = {**TEXT_ENCODER, "model_overrides": {**TOWER, "embed_dim": 8}}
    with pytest.raises(ValueError, match="the teacher takes text embeddings of width 16, the text encoder makes 8"):
        Distiller(load_config(data={**base, "text_encoder": wide}))


def test_clip_score_of_a_text_conditioned_run(text_teacher, tmp_path):
    """`potstill eval RUN --clip-score` scores each prompt's samples with the run's open_clip model, both towers from
    its local weights file; recomputed here with torchvision's resize and normalisation on the same samples."""
    import torchvision.transforms.functional as TF

    from potstill.runs import distill, open_run
    torch.manual_seed(5)
    source = open_clip.create_model("ViT-B-32", pretrained=None, pretrained_text=False, **TOWER)
    weights = tmp_path / "clip.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, weights)
    prompts = ["a handwritten digit one", "a cat"]
    config = load_config(data={
        "modality": {"kind": "image", "classifier": None, "prompts": prompts},
        "text_encoder": TEXT_ENCODER | {"checkpoint": str(weights)},
        "teacher": {"kind": "dit", "checkpoint": text_teacher},
        "generator": {"kind": "denoiser", "times": [2.5]},
        "fake_score": "teacher_copy", "objective": "dmd2",
        "train": {"steps": 1, "batch_size": 4, "progress": False, "sample_every": 0},
        "eval": {"n_samples": 6, "batch_size": 2},
    })
    distill(config, tmp_path / "run")
    main(["eval", str(tmp_path / "run"), "--clip-score"])
    reported = json.loads((tmp_path / "run" / "report.json").read_text())["clip_score"]
    assert reported["n"] == 6 and reported["prompts"] == 2
    run = open_run(tmp_path / "run")
    generator = torch.Generator().manual_seed(0)
    tokenizer = open_clip.get_tokenizer("ViT-B-32", context_length=24)
    scores = []
    with torch.no_grad():
        for prompt, embedding in zip(prompts, run.text_encoder.encode(prompts), strict=True):
            for rows in (2, 1):
                noise = torch.randn(rows, 1, 8, 8, generator=generator)
                x = run.ema.model.sample(noise, embedding.expand(rows, -1).clone()).clamp(-1, 1)
                rgb = ((x + 1) / 2).expand(-1, 3, -1, -1)
                pixels = TF.normalize(TF.resize(rgb, [32, 32], TF.InterpolationMode.BICUBIC, antialias=True),
                                      source.visual.image_mean, source.visual.image_std)
                image = source.encode_image(pixels, normalize=True)
                text = source.encode_text(tokenizer([prompt] * rows), normalize=True)
                scores.append((100 * (image * text).sum(-1)).clamp(min=0))
    assert reported["value"] == pytest.approx(float(torch.cat(scores).mean()), rel=1e-5)


def test_token_output_keeps_the_states_and_packs_the_pooled_embedding_a_unet_teacher_reads(tmp_path):
    encoder, pooled_only = tiny_encoder(tokens=True), tiny_encoder()
    packed = encoder.encode(["a cat", "a dog"])
    assert packed.shape == (2, 24 + 1, 32)
    states, pooled = encoder.layout.split(packed)
    torch.testing.assert_close(pooled, pooled_only.encode(["a cat", "a dog"]))
    torch.testing.assert_close(encoder.null, encoder.encode([""]))
    tiny_unet(cross_attention_dim=32).save_pretrained(tmp_path / "unet")
    DDPMScheduler(prediction_type="epsilon").save_pretrained(tmp_path / "scheduler")
    entry = TEACHERS.get("diffusers", "teacher.kind")
    teacher = entry.builder(entry.options(path=str(tmp_path)), SimpleNamespace(text_encoder=encoder))
    x_t = torch.randn(2, 2, 4, 4)
    with torch.no_grad():
        expected = teacher.backbone.model(x_t, torch.full((2,), 499.5), encoder_hidden_states=states).sample
        torch.testing.assert_close(teacher.backbone(x_t, torch.full((2,), 499.5), packed), expected)
