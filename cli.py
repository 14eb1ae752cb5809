"""The `potstill` command: distill, sample, eval, demo and data."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from potstill.data.commands import add_data_commands


def _distill(args) -> None:
    from potstill.core.config import load_config
    from potstill.runs import default_run_dir, distill

    config = load_config(args.config, args.set)
    run_dir = Path(args.out) if args.out else default_run_dir(args.config)
    distiller = distill(config, run_dir, args.resume, args.allow_change)
    print(json.dumps(json.loads((run_dir / "report.json").read_text()), indent=2))
    print(f"run directory: {distiller.run_dir}")


def positive(text: str) -> int:
    """An argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not >= 1")
    return value


def _sample(args) -> None:
    import torch

    from potstill.core.tensors import to_device
    from potstill.runs import open_run

    distiller = open_run(args.run, args.device)
    out = Path(args.out)
    formats = tuple(dict.fromkeys((".pt", *distiller.modality.sample_formats)))
    if out.suffix not in formats:
        raise ValueError(f"--out {out}: this run's samples can be written as {', '.join(formats)}")
    generator = torch.Generator().manual_seed(args.seed)
    chunks, conds = [], []
    with torch.no_grad():
        for start in range(0, args.n, args.batch):
            noise, cond = distiller.draw_inputs(min(args.batch, args.n - start), generator)
            chunks.append(distiller.ema.model.sample(noise, cond).float().cpu())
            conds.append(to_device(cond, "cpu"))
    samples = torch.cat(chunks)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".pt":
        torch.save(samples, out)
    else:
        out = distiller.modality.save_samples(samples, torch.cat(conds) if conds[0] is not None else None, out)
    print(f"wrote {args.n} samples of shape {tuple(samples.shape[1:])} to {out}")


def _eval(args) -> None:
    from potstill.runs import open_run

    distiller = open_run(args.run, args.device)
    if args.n:
        distiller.config.eval.n_samples = args.n
    print(json.dumps(distiller.evaluate(), indent=2))


def _demo(args) -> None:
    from potstill.demo import run_demo

    run_demo(Path(args.out), steps=args.steps)


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
    p.set_defaults(func=_distill)

    p = sub.add_parser("sample", help="draw samples from a run's EMA student")
    p.add_argument("run", help="run directory or checkpoint folder")
    p.add_argument("--n", type=positive, default=64)
    p.add_argument("--out", required=True, help="FILE.pt (tensor [N, ...]) or FILE.png (grid; image and 2-D runs)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=positive, default=1000)
    add_device_argument(p)
    p.set_defaults(func=_sample)

    p = sub.add_parser("eval", help="score a run's EMA student and rewrite its report.json")
    p.add_argument("run")
    p.add_argument("--n", type=positive, default=None, help="samples to score (default: the config's eval.n_samples)")
    add_device_argument(p)
    p.set_defaults(func=_eval)

    p = sub.add_parser("demo", help="distil the embedded digits teacher into a one-step student")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--steps", type=positive, default=None, help="override the demo's number of steps")
    p.set_defaults(func=_demo)

    add_data_commands(sub)
    return parser


def run_reporting_errors(prog: str, action) -> None:
    """Run `action()`; a bad setting, file or non-finite value is one line on stderr and exit code 2, a stop by
    SIGTERM/SIGINT (after its checkpoint) the shell's 128 + signal."""
    from potstill.core.preemption import Preempted

    try:
        action()
    except Preempted as stop:
        print(f"{prog}: {stop}", file=sys.stderr)
        raise SystemExit(stop.exit_code) from None
    except (ValueError, FileNotFoundError, FileExistsError, KeyError, FloatingPointError) as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    flatten_overrides(args)
    run_reporting_errors("potstill", lambda: args.func(args))


if __name__ == "__main__":
    main()
