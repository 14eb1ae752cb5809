"""The `potstill` command: distill, train-teacher, sample, eval, export, demo and data."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from potstill.data.commands import add_data_commands


def _distill(args) -> None:
    from potstill.core.config import load_config
    from potstill.runs import default_run_dir, distill

    prompt = [] if args.prompt is None else ["modality.shape=null", f"modality.prompt={json.dumps(args.prompt)}"]
    config = load_config(args.config, args.set + prompt)
    run_dir = Path(args.out) if args.out else default_run_dir(args.config)
    distiller = distill(config, run_dir, args.resume, args.allow_change)
    print(json.dumps(json.loads((run_dir / "report.json").read_text()), indent=2))
    print(f"run directory: {distiller.run_dir}")


def _train_teacher(args) -> None:
    from potstill.core.teacher_config import load_teacher_config
    from potstill.core.teacher_training import train_teacher
    from potstill.runs import default_run_dir

    config = load_teacher_config(args.config, args.set)
    run_dir = Path(args.out) if args.out else default_run_dir(args.config)
    print(f"teacher file: {train_teacher(config, run_dir, args.resume, args.allow_change)}")


def positive(text: str) -> int:
    """An argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not >= 1")
    return value


def _sample(args) -> None:
    from potstill.sampling import SampleRequest, sample_run

    sample_run(SampleRequest(args.run, args.n, Path(args.out), args.seed, args.batch, args.device, args.label,
                             args.frames, args.stream, args.steps))


def _eval(args) -> None:
    from potstill.runs import open_run

    if bool(args.fid_real) != bool(args.inception):
        raise SystemExit("potstill eval: --fid-real and --inception go together (FID needs real images and the "
                         "Inception weights file)")

    distiller = open_run(args.run, args.device)
    if args.n:
        distiller.config.eval.n_samples = args.n
    report = distiller.evaluate()
    if args.fid_real:
        from potstill.core.fid import run_fid

        report["fid"] = run_fid(distiller, args.fid_real, args.inception, distiller.config.eval.n_samples,
                                distiller.config.eval.batch_size)
    if args.clip_score:
        from potstill.core.clip_score import run_clip_score

        report["clip_score"] = run_clip_score(distiller, distiller.config.eval.n_samples,
                                              distiller.config.eval.batch_size)
    extra = {key: report[key] for key in ("fid", "clip_score") if key in report}
    if extra:
        from potstill.core.checkpoint import write_text_atomic

        path = distiller.run_dir / "report.json"
        write_text_atomic(path, json.dumps(json.loads(path.read_text()) | extra, indent=2))
    print(json.dumps(report, indent=2))


def _export(args) -> None:
    if args.diffusers is None and args.ply is None and args.turntable is None:
        raise ValueError("export: give --diffusers (a diffusers teacher's student) or --ply and/or --turntable "
                         "(a text-to-3D run's field)")
    if args.diffusers is not None:
        from potstill.core.diffusers_export import export_diffusers
        from potstill.runs import open_run

        record = export_diffusers(open_run(args.run, args.device), args.diffusers)
        print(f"wrote {args.diffusers}: {json.dumps(record)}")
    if args.ply is not None or args.turntable is not None:
        from potstill.export3d import ExportRequest, export_run

        request = ExportRequest(args.run, args.ply, args.turntable, args.frames, args.views, args.size, args.device)
        for path in export_run(request):
            print(f"wrote {path}")


def _demo(args) -> None:
    if args.which == "3d":
        from potstill.demo_3d import run_3d_demo

        run_3d_demo(Path(args.out or "runs/demo_3d"), steps=args.steps)
        return
    if args.which == "video":
        from potstill.demo_video import run_video_demo

        run_video_demo(Path(args.out or "runs/demo_video"), steps=args.steps)
        return
    if args.which == "audio":
        from potstill.demo_audio import run_audio_demo

        run_audio_demo(Path(args.out or "runs/demo_audio"), steps=args.steps)
        return
    from potstill.demo import run_demo

    run_demo(Path(args.out or "runs/demo"), steps=args.steps)


def add_distill_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments shared by `potstill distill` and the DeepSpeed launch module."""
    parser.add_argument("config")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", nargs="+",
                        help="override any config key; values are YAML (lists work)")
    parser.add_argument("--out", help="run directory (default: runs/<config>-<time>)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    parser.add_argument("--allow-change", action="append", default=[], metavar="KEY", nargs="+",
                        help="on --resume, apply a changed config key (or section) instead of refusing it")


def flatten_overrides(args: argparse.Namespace) -> None:
    """`--set a=1 --set b=2 c=3` (and `--allow-change`) as one flat list."""
    for name in ("set", "allow_change"):
        if hasattr(args, name):
            setattr(args, name, [item for group in getattr(args, name) for item in group])


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                        help="where to run the student (auto: cuda when there is one)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="potstill", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("distill", help="distil a teacher into a student from a YAML config")
    add_distill_arguments(p)
    p.add_argument("--prompt", help="the subject of a text-conditioned teacher (text-to-3D): sets "
                   "modality.prompt, in place of the config's modality.shape")
    p.set_defaults(func=_distill)

    p = sub.add_parser("train-teacher", help="train a teacher (any registered backbone, schedule and dataset) by "
                       "denoising score matching; writes DIR/teacher.safetensors for teacher.kind: trained")
    add_distill_arguments(p)
    p.set_defaults(func=_train_teacher)

    p = sub.add_parser("sample", help="draw samples from a run's EMA student")
    p.add_argument("run", help="run directory or checkpoint folder")
    p.add_argument("--n", type=positive, default=64)
    p.add_argument("--out", required=True, help="FILE.pt (tensor [N, ...] in the data range) or the modality's "
                   "view: FILE.png (image grid, 2-D density, video strip, spectrograms), FILE.mp4 (video), "
                   "FILE.wav or DIR/ (audio: one wav per sample and a spectrogram grid)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=positive, default=1000)
    p.add_argument("--class", dest="label", type=int, default=None, help="draw every sample of this class")
    p.add_argument("--frames", type=positive, default=None, help="clip length (video runs; past the training "
                   "length the student streams with its rolling or segment cache)")
    p.add_argument("--stream", action="store_true", help="generate chunk by chunk, printing each chunk's latency")
    p.add_argument("--steps", type=positive, default=None, help="sampling steps of a few-step student (ping-pong "
                   "along evenly spaced times; default: the run's generator.times)")
    add_device_argument(p)
    p.set_defaults(func=_sample)

    p = sub.add_parser("eval", help="score a run's EMA student and rewrite its report.json")
    p.add_argument("run")
    p.add_argument("--n", type=positive, default=None, help="samples to score (default: the config's eval.n_samples)")
    p.add_argument("--fid-real", default=None, metavar="PATTERN",
                   help="also FID against as many real images from these shards (needs --inception)")
    p.add_argument("--inception", default=None, metavar="FILE",
                   help="the Inception weights for FID: torch-fidelity's pt_inception-2015-12-05 file, local")
    p.add_argument("--clip-score", action="store_true",
                   help="also the CLIP score of a text-conditioned run, by its text encoder's open_clip model")
    add_device_argument(p)
    p.set_defaults(func=_eval)

    p = sub.add_parser("export", help="write a diffusers teacher's student as a diffusers pipeline folder, or a "
                       "text-to-3D run's field as a PLY point cloud and/or a turntable")
    p.add_argument("run", help="run directory or checkpoint folder")
    p.add_argument("--diffusers", type=Path, default=None,
                   help="OUT_DIR: the student (LoRA merged) in a copy of the teacher's pipeline, with an LCM scheduler")
    p.add_argument("--ply", type=Path, default=None, help="binary PLY of the surface points and their colours")
    p.add_argument("--turntable", type=Path, default=None, help="FILE.mp4 (PyAV) or FILE.png (a grid of views)")
    p.add_argument("--frames", type=positive, default=36, help="turntable views, evenly round the vertical axis")
    p.add_argument("--views", type=positive, default=48, help="cameras all round whose surface points make the PLY")
    p.add_argument("--size", type=positive, default=96, help="pixels across each rendered view")
    add_device_argument(p)
    p.set_defaults(func=_export)

    p = sub.add_parser("demo", help="image: distil the embedded digits teacher into a one-step student; video: "
                       "distil the moving-digits teacher into a causal streaming student; audio: ARC post-training "
                       "of the tones teacher into a few-step student; 3d: SDS and CFD of the shapes teacher into "
                       "a voxel grid, scored against the analytic shape")
    p.add_argument("which", nargs="?", choices=["image", "video", "audio", "3d"], default="image")
    p.add_argument("--out", default=None, help="default runs/demo, runs/demo_video, runs/demo_audio or runs/demo_3d")
    p.add_argument("--steps", type=positive, default=None, help="override the demo's number of steps")
    p.set_defaults(func=_demo)

    add_data_commands(sub)
    return parser


def run_reporting_errors(prog: str, action) -> None:
    """Run `action()`; a bad setting, file, non-finite value or too large a model is one line on stderr and exit
    code 2, a stop by SIGTERM/SIGINT (after its checkpoint) the shell's 128 + signal."""
    from potstill.core.preemption import Preempted

    try:
        action()
    except Preempted as stop:
        print(f"{prog}: {stop}", file=sys.stderr)
        raise SystemExit(stop.exit_code) from None
    except (ValueError, FileNotFoundError, FileExistsError, KeyError, FloatingPointError, MemoryError) as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    flatten_overrides(args)
    run_reporting_errors("potstill", lambda: args.func(args))


if __name__ == "__main__":
    main()
