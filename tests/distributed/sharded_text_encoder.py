"""Run under `deepspeed --num_gpus 2` with an SD3-like text folder (two CLIPs and a T5 whose embedding is tied),
an open_clip model file (image and text towers), its `model_overrides` as JSON and an output folder: each text
encoder built split across the ranks and whole; the ranks then ask for different prompts (one of them for none it
lacks), and each writes what its split encoders gave against the whole ones and how much of each it holds."""

import json
import sys
from pathlib import Path

import torch

from potstill.backbones.prompt_cache import prompt_exchange_group
from potstill.backbones.text_encoders import OpenClipTextEncoder, OpenClipTextOptions
from potstill.backbones.text_split import TextSplit
from potstill.backbones.transformers_text import TextModelOptions, TransformersTextEncoder, TransformersTextOptions
from potstill.core.config import TrainConfig
from potstill.core.deepspeed_engine import DeepSpeedEngine, DeepSpeedOptions
from potstill.core.zero_build import is_partitioned

ASKED = [  # (rank 0's prompts, rank 1's prompts), call by call
    (["a red box", "a cat"], ["a cat", "two dogs", "a long caption about a blue torus"]),
    (["a red box"], ["a green drum"]),           # rank 0 holds its prompt: it still runs rank 1's with it
    ([], ["a cat", "one more"]),
]


def held(module: torch.nn.Module) -> dict:
    parameters = list(module.parameters())
    return {"partitioned": all(is_partitioned(p) for p in parameters),
            "held": sum(p.ds_tensor.numel() for p in parameters),
            "total": sum(p.ds_numel for p in parameters)}


def compare(split, whole, rank: int) -> dict:
    gaps = []
    for asked in ASKED:
        prompts = asked[rank]
        got = split.encode(prompts)
        gaps.append(float((got - whole.encode(prompts)).abs().max()) if prompts else 0.0)
        assert got.shape[0] == len(prompts)
    null = getattr(split, "null", None)
    null_gap = float((null - whole.null).abs().max()) if null is not None else 0.0
    return {"gaps": gaps, "null_gap": null_gap, "cached": len(split.cache.held)}


def main(sd3_folder: Path, clip_file: Path, tower_file: Path, out: Path) -> None:
    tower = json.loads(tower_file.read_text())
    engine = DeepSpeedEngine(DeepSpeedOptions(zero_stage=3), TrainConfig(batch_size=2))
    split = TextSplit(engine, engine.partition_for(True, torch.float32), None, prompt_exchange_group())
    encoders = [TextModelOptions("text_encoder", "tokenizer", hidden_layer=-2),
                TextModelOptions("text_encoder_2", "tokenizer_2", hidden_layer=-2),
                TextModelOptions("text_encoder_3", "tokenizer_3", max_length=12)]
    options = TransformersTextOptions(str(sd3_folder), encoders)
    report = {"rank": engine.rank}
    sd3 = TransformersTextEncoder(options, split)
    report["transformers"] = compare(sd3, TransformersTextEncoder(options), engine.rank) | held(sd3.models)
    report["t5_tied"] = sd3.models[2].shared.weight is sd3.models[2].encoder.embed_tokens.weight
    for tokens in (False, True):
        clip_options = OpenClipTextOptions(model="ViT-B-32", checkpoint=str(clip_file), model_overrides=tower,
                                           tokens=tokens)
        clip = OpenClipTextEncoder(clip_options, split)
        report[f"open_clip_tokens_{tokens}"] = (compare(clip, OpenClipTextEncoder(clip_options), engine.rank)
                                                | held(clip.tower))
    random_options = OpenClipTextOptions(model="ViT-B-32", model_overrides=tower, init_seed=4)
    report["open_clip_random"] = compare(OpenClipTextEncoder(random_options, split),
                                         OpenClipTextEncoder(random_options), engine.rank)
    (out / f"rank{engine.rank}.json").write_text(json.dumps(report))
    engine.close()


if __name__ == "__main__":
    paths = [a for a in sys.argv[1:] if not a.startswith("--local_rank")]
    main(*map(Path, paths))
