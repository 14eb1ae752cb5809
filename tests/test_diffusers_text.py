"""Token-sequence text conditioning (backbones/transformers_text.py), a text-conditioned diffusers UNet teacher and a
diffusers VAE codec, on tiny random models saved into temp folders (tests/diffusers_fixtures.py): the encoder's
states and pooled vectors are the transformers models' own, joined as SD3 joins two CLIPs and a T5; the UNet
teacher's x0 is the scheduler's own prediction at the CLIP tokens and guides against the empty prompt; the VAE
codec scales as the diffusers pipelines do; DMD2 and SiD train LoRA adapters in latent space against real digits
encoded on the fly; bad settings are named."""

import io
import json
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from diffusers_fixtures import TOKENS, save_sd3_text_encoders, save_sd_like, tiny_vae
from transformers import AutoTokenizer, CLIPTextModel

from potstill.backbones.transformers_text import TextModelOptions, TransformersTextEncoder, TransformersTextOptions
from potstill.cli import main
from potstill.core.config import ConfigError, load_config
from potstill.core.diffusers_vae import DiffusersVAECodec, DiffusersVAEOptions
from potstill.core.distiller import Distiller
from potstill.core.registry import TEACHERS
from potstill.data.shard_stream import read_shards

PROMPTS = ["a handwritten digit one", "a handwritten digit seven"]
LORA = {"rank": 2, "alpha": 2.0, "target_modules": ["to_q", "to_k", "to_v", "to_out.0"]}


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory):
    return save_sd_like(tmp_path_factory.mktemp("sd_like"))


@pytest.fixture(scope="module")
def sd3_text_folder(tmp_path_factory):
    """Two CLIPs with projections (widths 16 and 8) and a T5 (width 32), as SD3's pipeline folder holds them."""
    return save_sd3_text_encoders(tmp_path_factory.mktemp("sd3_text"))


def sd3_encoder(folder, null: str = "empty_prompt") -> TransformersTextEncoder:
    encoders = [TextModelOptions("text_encoder", "tokenizer", hidden_layer=-2),
                TextModelOptions("text_encoder_2", "tokenizer_2", hidden_layer=-2),
                TextModelOptions("text_encoder_3", "tokenizer_3", max_length=12)]
    return TransformersTextEncoder(TransformersTextOptions(str(folder), encoders, null=null))


def by_hand(folder, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """SD3's joining, written out: CLIP penultimate states side by side, padded to T5's width, then T5's tokens;
    the two projected CLIP vectors side by side."""
    from transformers import CLIPTextModelWithProjection, T5EncoderModel

    states, pooled = [], []
    for index in ("", "_2"):
        tokenizer = AutoTokenizer.from_pretrained(folder / f"tokenizer{index}")
        model = CLIPTextModelWithProjection.from_pretrained(folder / f"text_encoder{index}")
        ids = tokenizer(prompts, padding="max_length", max_length=TOKENS, truncation=True, return_tensors="pt")
        output = model(ids.input_ids, output_hidden_states=True)
        states.append(output.hidden_states[-2])
        pooled.append(output.text_embeds)
    tokenizer = AutoTokenizer.from_pretrained(folder / "tokenizer_3")
    ids = tokenizer(prompts, padding="max_length", max_length=12, truncation=True, return_tensors="pt")
    t5 = T5EncoderModel.from_pretrained(folder / "text_encoder_3")(ids.input_ids).last_hidden_state
    clip = F.pad(torch.cat(states, dim=-1), (0, 32 - 24))
    return torch.cat([clip, t5], dim=1), torch.cat(pooled, dim=-1)


def test_sd3_style_states_and_pooled_vectors_are_the_models_own(sd3_text_folder):
    encoder = sd3_encoder(sd3_text_folder)
    assert (encoder.layout.tokens, encoder.layout.dim, encoder.layout.pooled_dim) == (TOKENS + 12, 32, 22)
    packed = encoder.encode(PROMPTS)
    assert packed.shape == (2, TOKENS + 12 + 1, 32)
    states, pooled = encoder.layout.split(packed)
    with torch.no_grad():
        expected_states, expected_pooled = by_hand(sd3_text_folder, PROMPTS)
    torch.testing.assert_close(states, expected_states, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(pooled, expected_pooled, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(encoder.null, encoder.encode([""]))
    assert not sd3_encoder(sd3_text_folder, null="zeros").null.any()
    assert torch.equal(encoder.encode(PROMPTS[::-1]), packed.flip(0))     # the cache answers the same rows
    with pytest.raises(ValueError, match=r"text condition: expected \[n, 45, 32\]"):
        encoder.layout.split(packed[:, :-1])


def build_text_teacher(folder, encoder):
    entry = TEACHERS.get("diffusers", "teacher.kind")
    options = entry.options(path=str(folder), model_class="UNet2DConditionModel")
    return entry.builder(options, type("Context", (), {"text_encoder": encoder})())


def test_text_unet_teacher_is_the_schedulers_prediction_and_guides_against_the_empty_prompt(sd_folder):
    encoder = TransformersTextEncoder(TransformersTextOptions(str(sd_folder)))
    teacher = build_text_teacher(sd_folder, encoder)
    scheduler = DDPMScheduler.from_pretrained(sd_folder, subfolder="scheduler")
    unet = UNet2DConditionModel.from_pretrained(sd_folder, subfolder="unet")
    clip = CLIPTextModel.from_pretrained(sd_folder, subfolder="text_encoder")
    ids = AutoTokenizer.from_pretrained(sd_folder, subfolder="tokenizer")(
        [*PROMPTS, ""], padding="max_length", max_length=TOKENS, return_tensors="pt").input_ids
    torch.manual_seed(4)
    x0, eps = torch.randn(2, 2, 4, 4), torch.randn(2, 2, 4, 4)
    cond = encoder.encode(PROMPTS)
    with torch.no_grad():
        tokens = clip(ids).last_hidden_state
        for k in [0, 37, 500, 999]:
            x_t = scheduler.add_noise(x0, eps, torch.full((2,), k))
            t = torch.full((2,), k / 999)
            output = unet(x_t, torch.full((2,), k), encoder_hidden_states=tokens[:2]).sample
            expected = torch.stack([scheduler.step(output[i:i + 1], k, x_t[i:i + 1]).pred_original_sample[0]
                                    for i in range(2)])
            torch.testing.assert_close(teacher.x0(x_t, t, cond), expected, rtol=1e-4, atol=1e-5)
        null = unet(x_t, torch.full((2,), 999), encoder_hidden_states=tokens[2:].expand(2, -1, -1)).sample
        unconditional = torch.stack([scheduler.step(null[i:i + 1], 999, x_t[i:i + 1]).pred_original_sample[0]
                                     for i in range(2)])
        torch.testing.assert_close(teacher.x0(x_t, t, cond, guidance=4.0),
                                   unconditional + 4 * (expected - unconditional), rtol=1e-4, atol=1e-4)
    assert teacher.num_classes == 0 and teacher.sample_shape == (2, 4, 4)


def test_the_vae_codec_scales_as_the_pipelines_do(tmp_path):
    tiny_vae(shift_factor=0.1).save_pretrained(tmp_path / "vae")
    codec = DiffusersVAECodec(DiffusersVAEOptions(path=str(tmp_path)))
    vae = AutoencoderKL.from_pretrained(tmp_path, subfolder="vae")
    images = torch.rand(3, 1, 8, 8) * 2 - 1
    with torch.no_grad():
        latents = codec.encode(images)
        torch.testing.assert_close(latents, (vae.encode(images).latent_dist.mode() - 0.1) * 0.7)
        torch.testing.assert_close(codec.decode(latents), vae.decode(latents / 0.7 + 0.1).sample)
    assert codec.sample_shape((1, 8, 8)) == (2, 4, 4) and codec.data_shape((2, 4, 4)) == (1, 8, 8)
    with pytest.raises(ValueError, match=r"codec: the VAE encodes images \[1, H, W\], the data are \[3, 8, 8\]"):
        codec.sample_shape((3, 8, 8))
    with pytest.raises(ValueError, match="not divisible by 2"):
        codec.sample_shape((1, 7, 8))


def latent_run(sd_folder, digits_shards, objective: str, adversary: dict | None, **extra):
    return load_config(data={
        "modality": {"kind": "image", "classifier": None, "prompts": PROMPTS},
        "text_encoder": {"kind": "transformers", "path": str(sd_folder)},
        "teacher": {"kind": "diffusers", "path": str(sd_folder), "model_class": "UNet2DConditionModel"},
        "codec": {"kind": "diffusers_vae", "path": str(sd_folder)},
        "generator": {"kind": "denoiser", "times": [1.0], "lora": LORA},
        "fake_score": {"kind": "teacher_copy", "lora": LORA},
        "objective": objective,
        "adversary": adversary,
        "real_data": {"kind": "webdataset", "shards": digits_shards, "condition": "caption", "workers": 0},
        "train": {"steps": 2, "batch_size": 4, "progress": False, "generator_every": 1},
        **extra,
    })


@pytest.mark.parametrize("objective", ["dmd2", "sid"])
def test_lora_students_distil_in_latent_space_against_encoded_real_digits(objective, sd_folder, digits_shards):
    adversary = {"kind": "feature_gan", "network": "fake_score", "layers": [-1]} if objective == "dmd2" else None
    run = Distiller(latent_run(sd_folder, digits_shards, objective, adversary))
    noise, cond = run.draw_inputs(3, torch.Generator().manual_seed(0))
    assert noise.shape == (3, 2, 4, 4) and cond.shape == (3, TOKENS, 16)
    real_x, real_cond = run.next_real(4)
    assert real_x.shape == (4, 2, 4, 4) and real_cond.shape == (4, TOKENS, 16)
    trained = {n: p.detach().clone() for n, p in run.generator.named_parameters() if p.requires_grad}
    frozen = {n: p.detach().clone() for n, p in run.generator.named_parameters() if not p.requires_grad}
    assert trained and all("lora_" in n for n in trained)
    run.train()
    parameters = dict(run.generator.named_parameters())
    assert any(not torch.equal(parameters[n], v) for n, v in trained.items())
    assert all(torch.equal(parameters[n], v) for n, v in frozen.items())
    with torch.no_grad():
        assert run.modality.decode(run.generator.sample(noise, cond)).shape == (3, 1, 8, 8)


def path_alone(folder):
    return load_config(data={
        "modality": {"kind": "image", "classifier": None, "prompts": PROMPTS},
        "teacher": {"kind": "diffusers", "path": str(folder)},
        "generator": {"kind": "denoiser", "times": [1.0], "lora": LORA},
        "fake_score": {"kind": "teacher_copy", "lora": LORA},
        "objective": "dmd2",
        "train": {"steps": 1, "batch_size": 2, "progress": False},
    })


def test_a_pipeline_folder_runs_from_its_path_alone(sd_folder, tmp_path):
    """Model class, subfolder, text encoder and VAE codec all come from the folder."""
    run = Distiller(path_alone(sd_folder))
    assert isinstance(run.text_encoder, TransformersTextEncoder) and isinstance(run.codec, DiffusersVAECodec)
    torch.testing.assert_close(run.text_encoder.encode(PROMPTS),
                               TransformersTextEncoder(TransformersTextOptions(str(sd_folder))).encode(PROMPTS))
    run.train()
    noise, cond = run.draw_inputs(2, torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert run.modality.decode(run.generator.sample(noise, cond)).shape == (2, 1, 8, 8)
    for part in ("unet", "scheduler"):
        shutil.copytree(sd_folder / part, tmp_path / part)
    with pytest.raises(ConfigError, match=r"text_encoder: the teacher reads token sequences and .* holds no "
                                          "text_encoder/"):
        Distiller(path_alone(tmp_path))


def test_data_encode_and_embed_store_latents_and_token_sequences_a_run_reads_back(sd_folder, digits_shards,
                                                                                  tmp_path, capsys):
    one_shard = digits_shards.replace("{000000..000005}", "000003")
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({
        "modality": {"kind": "image", "classifier": None, "prompts": PROMPTS},
        "teacher": {"kind": "diffusers", "path": str(sd_folder)},
        "text_encoder": {"kind": "transformers", "path": str(sd_folder)},
        "generator": {"kind": "denoiser", "times": [1.0], "lora": LORA},
        "fake_score": {"kind": "teacher_copy", "lora": LORA},
        "objective": "dmd2",
        "real_data": {"kind": "webdataset", "shards": one_shard, "condition": "caption", "workers": 0},
        "train": {"steps": 1, "batch_size": 4, "progress": False},
    }))
    main(["data", "encode", one_shard, str(tmp_path / "latents"), "--config", str(config)])
    assert "encoded 300 of 300 samples' media into 1 shards" in capsys.readouterr().out
    main(["data", "embed", str(tmp_path / "latents" / "digits-000003.tar"), str(tmp_path / "both"),
          "--config", str(config)])
    samples = list(read_shards([str(tmp_path / "both" / "digits-000003.tar")], []))
    codec = DiffusersVAECodec(DiffusersVAEOptions(path=str(sd_folder)))
    image = read_digit(samples[0]["png"])
    with torch.no_grad():
        expected = codec.encode(image[None])[0]
    torch.testing.assert_close(torch.from_numpy(np.load(io.BytesIO(samples[0]["latent.npy"]))), expected)
    tokens = np.load(io.BytesIO(samples[0]["text_emb.npy"]))
    assert tokens.shape == (TOKENS, 16)
    stored = {"kind": "webdataset", "shards": str(tmp_path / "both" / "digits-000003.tar"), "media": "tensor",
              "tensor": {"fields": ["latent.npy"]}, "condition": "embedding", "workers": 0, "shuffle_buffer": 0,
              "shuffle_shards": False}
    run = Distiller(load_config(config, [f"real_data={json.dumps(stored)}"]))
    real_x, real_cond = run.next_real(4)
    assert real_x.shape == (4, 2, 4, 4) and real_cond.shape == (4, TOKENS, 16)
    torch.testing.assert_close(real_x[0], expected)
    torch.testing.assert_close(real_cond[0], torch.from_numpy(tokens))


def read_digit(png: bytes) -> torch.Tensor:
    from PIL import Image
    from torchvision.transforms.functional import pil_to_tensor

    return pil_to_tensor(Image.open(io.BytesIO(png)).convert("L")).float() / 127.5 - 1


def test_bad_text_settings_are_named(sd_folder, sd3_text_folder):
    with pytest.raises(ConfigError, match="text_encoder: this UNet2DConditionModel reads token sequences"):
        build_text_teacher(sd_folder, object())
    with pytest.raises(ConfigError, match="text_encoder: its token states are 32 wide; this UNet2DConditionModel "
                                          "attends to 16"):
        build_text_teacher(sd_folder, sd3_encoder(sd3_text_folder))
    with pytest.raises(ConfigError, match=r"text_encoder.encoders\[0\].subfolder: no config.json in"):
        TransformersTextEncoder(TransformersTextOptions(str(sd_folder), [TextModelOptions("unet_none")]))
    with pytest.raises(FileNotFoundError, match=r"codec.path: .* is not a folder"):
        DiffusersVAECodec(DiffusersVAEOptions(path=str(sd_folder / "none")))
