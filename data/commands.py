"""`potstill data pack | inspect | embed | encode | digits | tones`: make, look into and extend webdataset shards."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _pack(args) -> None:
    from potstill.data.pack import pack

    print(pack(Path(args.src), args.out_pattern, args.maxcount, args.maxsize, args.metadata,
               args.labels_from_folders).describe())


INSPECT_SIZES = {"image": {"size": 64, "channels": 3}, "video": {"size": 64}}   # no teacher to take them from
DAMAGED_EXIT = 1    # shards were read and some are damaged; 2 stays the CLI's exit status for bad input


def _inspect(args) -> None:
    from potstill.core.config import apply_overrides, from_dict
    from potstill.data.inspect_shards import check_epoch, inspect_shards
    from potstill.data.webdataset_source import WebDatasetOptions

    report = inspect_shards(args.pattern, args.show)
    print(report.describe())
    if args.media:
        raw = {"shards": args.pattern, "media": args.media, "workers": args.workers, **INSPECT_SIZES}
        options = from_dict(WebDatasetOptions, apply_overrides(raw, args.set), "real_data")
        if args.media in INSPECT_SIZES:
            shape = getattr(options, args.media)
            print(f"decoding {args.media} at size {shape.size}, {shape.channels} channels "
                  f"(--set {args.media}.size=... to change)")
        print(check_epoch(options, args.ranks, args.batch).describe())
    if report.damaged:
        print(f"potstill: {len(report.damaged)} of {len(report.shards)} shards are truncated or unreadable",
              file=sys.stderr)
        raise SystemExit(DAMAGED_EXIT)


def _embed(args) -> None:
    from potstill.backbones.text_encoders import text_encoder_from_section
    from potstill.core.config import apply_overrides, read_yaml
    from potstill.data.embed import embed_shards, shard_targets

    shard_targets(args.pattern, Path(args.out_dir))     # a bad OUT_DIR fails before the encoder is loaded
    if args.config:
        raw = read_yaml(Path(args.config)).get("text_encoder")
        if raw is None:
            raise ValueError(f"--config {args.config}: has no text_encoder section")
    else:
        raw = apply_overrides({"kind": "open_clip", "model": args.model, "checkpoint": args.checkpoint}, args.set)
    encoder = text_encoder_from_section(raw)
    summary = embed_shards(args.pattern, Path(args.out_dir), encoder.encode, args.caption_field, args.field)
    print(summary.describe())
    print(f"embedding width {encoder.dim}; train with real_data.condition: embedding, embedding_field: {args.field}")


def _encode(args) -> None:
    from potstill.data.encode import encode_shards

    summary = encode_shards(args.pattern, Path(args.out_dir), Path(args.config), args.field, args.batch)
    print(summary.describe())
    print(f"train with real_data: {{kind: webdataset, media: tensor, tensor: {{fields: [{args.field}]}}}}")


def _digits(args) -> None:
    from potstill.data.digits import export_digits

    count = export_digits(Path(args.out_dir))
    print(f"wrote {count} digits (png, cls, txt) to {args.out_dir}; pack them with "
          f"`potstill data pack {args.out_dir} OUT_DIR/digits-%06d.tar --maxcount 300`")


def _tones(args) -> None:
    from potstill.core.teacher_file import metadata_data, read_teacher_file
    from potstill.data.tones import export_tones, law_of_data

    _, metadata = read_teacher_file(args.teacher, "--teacher")
    data = metadata_data(metadata, "tones")
    if data is None:
        kind = (metadata.get("data") or {}).get("kind")
        raise ValueError(f"--teacher {args.teacher}: was not trained on tones (its data: {kind!r})")
    law = law_of_data(data)
    count = export_tones(Path(args.out_dir), law, args.n, args.seed)
    print(f"wrote {count} clips of {law.length} samples at {law.sample_rate} Hz (wav, cls) to {args.out_dir}; pack "
          f"them with `potstill data pack {args.out_dir} OUT_DIR/tones-%06d.tar --maxcount 500`")


def add_data_commands(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="make, inspect and extend webdataset shards")
    commands = data.add_subparsers(dest="data_command", required=True)

    p = commands.add_parser("pack", help="write a folder of media files (with captions/labels) as tar shards")
    p.add_argument("src", help="folder of images, videos, audio files or .npy/.pt/.safetensors tensors")
    p.add_argument("out_pattern", help="shard names with an index, e.g. shards/train-%%06d.tar")
    p.add_argument("--maxcount", type=int, default=10_000, help="samples per shard at most")
    p.add_argument("--maxsize", type=float, default=1e9, help="bytes per shard at most")
    p.add_argument("--metadata", help="CSV or JSONL with a file column (paths relative to SRC) and caption/label "
                                      "columns")
    p.add_argument("--labels-from-folders", action="store_true",
                   help="cls = index of the first sub-folder's name in sorted order")
    p.set_defaults(func=_pack)

    p = commands.add_parser("inspect", help="counts, fields and samples of shards; with --media, decode one epoch",
                            description="Counts, fields and samples of shards; with --media, one epoch decoded "
                                        "through the training pipeline. Exit status: 0 when every shard reads to "
                                        f"its end, {DAMAGED_EXIT} when any is truncated or unreadable (after the "
                                        "whole report), 2 on a usage or input error.")
    p.add_argument("pattern", help="shards, e.g. 'shards/train-{000000..000009}.tar'")
    p.add_argument("--show", type=int, default=3, help="samples of the first shard to print")
    p.add_argument("--media", choices=["image", "video", "audio", "tensor"],
                   help="decode one epoch through the training pipeline")
    p.add_argument("--ranks", type=int, default=1, help="with --media: read as this many ranks")
    p.add_argument("--workers", type=int, default=0, help="with --media: DataLoader workers per rank")
    p.add_argument("--batch", type=int, default=16, help="with --media: rows per batch")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", nargs="+",
                   help="a real_data option, e.g. image.size=64 or condition=label")
    p.set_defaults(func=_inspect)

    p = commands.add_parser("embed", help="copy shards adding each caption's text embedding")
    p.add_argument("pattern", help="input shards")
    p.add_argument("out_dir", help="folder for the new shards (same names); not the input shards' folder")
    p.add_argument("--config", help="a run config whose text_encoder section to use")
    p.add_argument("--model", default="ViT-B-32", help="open_clip model name")
    p.add_argument("--checkpoint", help="local weights file of that model (omit: seeded random tower)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", nargs="+",
                   help="another text_encoder option")
    p.add_argument("--caption-field", default="txt", help="field holding the caption (or json:path)")
    p.add_argument("--field", default="text_emb.npy", help="name of the embedding field written")
    p.set_defaults(func=_embed)

    p = commands.add_parser("encode", help="copy shards adding each sample's codec latents (a run's codec)")
    p.add_argument("pattern", help="input shards")
    p.add_argument("out_dir", help="folder for the new shards (same names); not the input shards' folder")
    p.add_argument("--config", required=True, help="the run config whose codec and real_data decoding to use")
    p.add_argument("--field", default="latent.npy", help="name of the latent field written")
    p.add_argument("--batch", type=int, default=32, help="samples encoded at once")
    p.set_defaults(func=_encode)

    p = commands.add_parser("digits", help="write the embedded 8x8 digits as png files with labels and captions")
    p.add_argument("out_dir")
    p.set_defaults(func=_digits)

    p = commands.add_parser("tones", help="write clips of a tones teacher's law as wav files with labels")
    p.add_argument("out_dir")
    p.add_argument("--teacher", default="embedded:tones_teacher", help="the teacher file whose law to draw")
    p.add_argument("--n", type=int, default=2000, help="clips to write")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_tones)
